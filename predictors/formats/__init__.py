"""File formats of latency lookup tables (ProxylessNAS/OFA YAML, CSV, JSON) and their store rows."""

from hwlat.predictors.formats.lut_files import FORMATS, TableEntry, TableFormatError, read_table, write_table
from hwlat.predictors.formats.lut_store import import_table, table_from_store

__all__ = [
    "FORMATS",
    "TableEntry",
    "TableFormatError",
    "import_table",
    "read_table",
    "table_from_store",
    "write_table",
]
