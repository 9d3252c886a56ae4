"""REINFORCE controller with the MnasNet reward (Tan et al. 2019, "MnasNet: Platform-Aware
Neural Architecture Search for Mobile").

Policy: one independent categorical distribution per decision (softmax over logits), the
factorised controller of ProxylessNAS/TuNAS rather than MnasNet's LSTM: cheaper, and with
one decision per layer it is what the LSTM mostly learns anyway.

Reward of an architecture with accuracy A (the primary objective, maximised) and, for
every latency budget T_d, latency L_d:

    R = A * prod_d (L_d / T_d) ** w_d
    reward="soft": w_d = exponent (MnasNet's alpha = beta = -0.07) on both sides of T;
    reward="hard": w_d = 0 when L_d <= T_d, -1 above (MnasNet's hard constraint).

The default is "hard": hwlat budgets are limits, and on the synthetic problem (see
benchmarks/RESULTS-search.md) "soft" spent most evaluations over budget (2x over costs
only 5% of reward) and found worse feasible networks than random search. "soft" is the
MnasNet choice when a budget is a target to trade around rather than a limit.

Update per told batch: advantage = (R - b) / std(R of the batch), b a moving average of
past rewards (``baseline_decay``); logits += learning_rate * mean(advantage * grad log pi).
Normalising by the batch spread makes the step size independent of the scale of the
accuracy proxy (FLOPs are ~1e8, NASWOT scores ~1e3). Defaults (batch 8, learning rate 1,
baseline decay 0.5: a baseline that follows the improving policy quickly) were chosen on
the synthetic problem over four problem seeds and 300-600 evaluations, where they halved
the gap to the optimum left by batch 16 / decay 0.9.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwlat.errors import HwlatError
from hwlat.search.strategies.base import Arch, SpaceLike, Strategy, canonical, register_strategy

REWARDS = ("soft", "hard")


class RewardError(HwlatError):
    """The objectives do not fit the MnasNet reward."""


@register_strategy
class Reinforce(Strategy):
    name = "rl"
    default_batch_size = 8

    def __init__(
        self,
        learning_rate: float = 1.0,
        baseline_decay: float = 0.5,
        reward: str = "hard",
        exponent: float = -0.07,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(random_state)
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; use one of {', '.join(REWARDS)}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay
        self.reward = reward
        self.exponent = exponent
        self._logits: list[np.ndarray] = []
        self._baseline: float | None = None
        # Sampled actions by the (canonical) arch handed out: canonical forms reorder or
        # zero choices, and the gradient must be that of what the policy actually drew.
        self._drawn: dict[Arch, list[Arch]] = {}

    def bind(self, space: SpaceLike, directions: Sequence[str], n_constraints: int) -> None:
        super().bind(space, directions, n_constraints)
        if self.directions[0] != "maximize":
            raise RewardError(
                "the rl strategy maximises its MnasNet reward accuracy x "
                "(latency/target)^w: the first objective must be maximised (an "
                "accuracy or a proxy score), not minimised"
            )
        self._logits = [np.zeros(len(d.options)) for d in space.decisions]

    def ask(self, n: int) -> list[Arch]:
        uniform = self.rng.random((n, len(self._logits)))
        columns = [
            np.minimum(np.searchsorted(np.cumsum(_softmax(z)), uniform[:, d], side="right"), z.size - 1)
            for d, z in enumerate(self._logits)
        ]
        archs = []
        for row in np.column_stack(columns):
            drawn = tuple(int(v) for v in row)
            arch = canonical(self.space, drawn)
            self._drawn.setdefault(arch, []).append(drawn)
            archs.append(arch)
        return archs

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        actions = np.asarray([self._action(a) for a in archs], dtype=int).reshape(len(archs), -1)
        rewards = self.rewards(-np.asarray(losses, dtype=float)[:, 0], np.asarray(ratios, dtype=float))
        ok = np.isfinite(rewards)
        if not ok.any():
            return
        actions, rewards = actions[ok], rewards[ok]
        mean = float(rewards.mean())
        baseline = mean if self._baseline is None else self._baseline
        spread = float(rewards.std())
        advantage = (rewards - baseline) / spread if spread > 0 else np.zeros_like(rewards)
        for d, logits in enumerate(self._logits):
            # d/dz log softmax(z)[a] = onehot(a) - softmax(z)
            grad = np.bincount(actions[:, d], weights=advantage, minlength=logits.size)
            grad -= advantage.sum() * _softmax(logits)
            logits += self.learning_rate * grad / len(actions)
        self._baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * mean

    def _action(self, arch: Arch) -> Arch:
        """What the policy drew for ``arch`` (the arch itself when another source proposed it)."""
        drawn = self._drawn.get(tuple(arch))
        if not drawn:
            return tuple(arch)
        action = drawn.pop(0)
        if not drawn:
            del self._drawn[tuple(arch)]
        return action

    def rewards(self, accuracy: np.ndarray, ratios: np.ndarray) -> np.ndarray:
        """MnasNet reward per architecture; raises if a budget applies and accuracy <= 0."""
        if ratios.shape[1] == 0:
            return accuracy
        if np.any(accuracy[np.isfinite(accuracy)] <= 0):
            raise RewardError(
                "the MnasNet reward accuracy x (latency/target)^w needs a positive "
                f"first objective, got {accuracy.min():.4g}; use a positive "
                "accuracy or proxy, or another strategy"
            )
        if self.reward == "soft":
            weights = np.full_like(ratios, self.exponent)
        else:
            weights = np.where(ratios <= 1.0, 0.0, -1.0)
        return accuracy * np.prod(ratios**weights, axis=1)

    def policy(self) -> list[np.ndarray]:
        """Current probabilities per decision (for inspection and plots)."""
        return [_softmax(z) for z in self._logits]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
