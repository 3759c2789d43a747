"""The mapping engine: declarative YAML files that turn canonical requests into back-end fields.

`load_mapping(path)` reads and validates one file (mappings/README.md describes the format);
`Mapping.apply(request)` gives the back-end fields, `Mapping.status(code)` the canonical status
of a back-end status code. Applying a mapping is pure: no I/O, no clock.
"""

from adapters.mapping._engine import FieldRule, Mapping
from adapters.mapping._errors import MappingFailed, MappingFileError, Problem, UnknownStatus
from adapters.mapping._load import load_mapping, parse_mapping, schema

__all__ = [
    "FieldRule",
    "Mapping",
    "MappingFailed",
    "MappingFileError",
    "Problem",
    "UnknownStatus",
    "load_mapping",
    "parse_mapping",
    "schema",
]
