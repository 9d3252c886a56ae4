"""Inventory keys for SSH devices, the example file, and progress lines for parallel campaigns."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from hwlat.devices.inventory import _KEYS, InventoryError, load_inventory
from hwlat.devices.ssh import resolve_target
from hwlat.profiler.progress import Progress, ProgressLogHandler

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_the_example_inventory_loads_and_documents_every_key() -> None:
    example = ROOT / "devices.example.toml"
    devices = load_inventory(example)
    assert {"local", "rpi4", "jetson"} <= set(devices)
    text = example.read_text()
    undocumented = [key for key in _KEYS if not re.search(rf"^#?\s*{key}\s*=", text, re.M)]
    assert undocumented == []
    rpi = devices["rpi4"]
    assert rpi.known_hosts == "~/.ssh/known_hosts" and rpi.connect_timeout_s == 15
    assert rpi.trust_on_first_use is False and rpi.port == 22


def test_an_unknown_key_names_the_line_and_the_known_keys(tmp_path) -> None:
    path = write(tmp_path, '[devices.pi]\nhost = "pi"\nknown_host = "/tmp/kh"\n')
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert f"{path}:3: unknown key 'known_host' in devices.pi; known keys:" in str(err.value)
    assert "known_hosts" in str(err.value)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('port = "22"', "devices.pi.port = '22' has the wrong type; it must be an integer port"),
        ('trust_on_first_use = "yes"', "it must be true or false"),
        ("connect_timeout_s = true", "it must be a number of seconds"),
        ("connect_timeout_s = 0", "devices.pi.connect_timeout_s: must be a finite number of seconds > 0"),
        ("known_hosts = 1", "it must be a path to a known_hosts file"),
    ],
)
def test_a_wrong_value_names_the_line_and_the_fix(tmp_path, line, expected) -> None:
    path = write(tmp_path, f'[devices.pi]\nhost = "pi"\n\n{line}\n')
    with pytest.raises(InventoryError, match=re.escape(f"{path}:4: ") + ".*" + re.escape(expected)):
        load_inventory(path)


def test_ssh_config_fills_what_the_inventory_leaves_out(tmp_path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host pi\n  HostName 10.1.2.3\n  Port 2200\n  User alarm\n"
        "  IdentityFile ~/keys/pi\n  ProxyCommand ssh -W %h:%p jump\n"
    )
    devices = load_inventory(
        write(tmp_path, '[devices.pi]\nhost = "pi"\n\n[devices.pi2]\nhost = "pi"\nport = 22\nuser = "me"\n')
    )
    target = resolve_target(devices["pi"], config)
    assert (target.hostname, target.port, target.user) == ("10.1.2.3", 2200, "alarm")
    assert target.identity_files == [str(Path("~/keys/pi").expanduser())]
    assert target.proxy_command == "ssh -W 10.1.2.3:2200 jump"
    explicit = resolve_target(devices["pi2"], config)
    assert (explicit.port, explicit.user) == (22, "me")  # the inventory wins


def test_parallel_progress_gives_each_device_its_own_lines() -> None:
    stream = io.StringIO()
    a, b = Progress(2, "a/ort", stream), Progress(2, "b/ort", stream)
    for bar in (a, b, a, b):
        bar.update(note="conv")
    a.close()
    b.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["[a/ort]", "[b/ort]", "[a/ort]", "[b/ort]"]
    assert lines[-1].startswith("[b/ort] 2/2 100%")


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, to see the escape sequences written to one."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_rich_draws_live_bars_and_logs_go_above() -> None:
    term = _Terminal()
    a, b = Progress(2, "a/ort", term), Progress(2, "b/ort", term)
    a.update(note="conv")
    b.update()
    ProgressLogHandler(term).emit(
        logging.LogRecord("x", logging.WARNING, "", 0, "b: reconnecting", None, None)
    )
    a.update()
    b.update()
    a.close()
    b.close()
    out = term.getvalue()
    assert "\x1b[" in out  # drawn in place
    after_log = out.rsplit("b: reconnecting", 1)[1]
    assert "[a/ort]" in after_log and "[b/ort]" in after_log and "2/2" in after_log
    assert "[a/ort] 1/2" not in out  # the plain-line form is for streams that are not terminals
