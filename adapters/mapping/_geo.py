"""Spatial transforms: which GeoJSON polygon holds a point, and coordinates in a projected CRS.

Both are built once per file or CRS and shared (cached), so applying a mapping does no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import shapely
from pyproj import CRS, Transformer
from shapely.geometry import shape

from adapters.mapping._transforms import Unfit


class GeoError(ValueError):
    """A GeoJSON file or a CRS that cannot be used; the message says why."""


@dataclass(frozen=True)
class PolygonIndex:
    """The features of a GeoJSON file, indexed for point-in-polygon lookups of one property."""

    geometries: tuple[Any, ...]
    values: tuple[Any, ...]
    tree: Any  # shapely.STRtree

    def value_at(self, lon: float, lat: float) -> Any:
        """The property of the first feature (in file order) covering the point, else None."""
        hits = self.tree.query(shapely.Point(lon, lat), predicate="intersects")
        if len(hits) == 0:
            return None
        return self.values[int(min(hits))]


# `mtime_ns` is read only as part of the cache key: a file changed since is a new key, read again.
@lru_cache(maxsize=64)
def _load_index(path: str, mtime_ns: int, prop: str) -> PolygonIndex:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise GeoError(f"cannot read {path} ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise GeoError(f"{path} is not JSON (line {exc.lineno}: {exc.msg})") from exc
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise GeoError(f"{path} is not a GeoJSON FeatureCollection")
    geometries, values = [], []
    for number, feature in enumerate(features, start=1):
        props = feature.get("properties") or {}
        if feature.get("geometry") is None:
            continue
        if prop not in props:
            raise GeoError(f"{path}: feature {number} has no property {prop!r}")
        try:
            geometry = shape(feature["geometry"])
        except Exception as exc:  # shapely raises several types for bad geometry
            raise GeoError(f"{path}: feature {number} has an invalid geometry ({exc})") from exc
        shapely.prepare(geometry)
        geometries.append(geometry)
        values.append(props[prop])
    if not geometries:
        raise GeoError(f"{path} has no features with a geometry")
    return PolygonIndex(tuple(geometries), tuple(values), shapely.STRtree(geometries))


def polygon_index(path: Path, prop: str) -> PolygonIndex:
    """The index of `path` by property `prop`, loaded once (reloaded if the file changes)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise GeoError(f"cannot read {path} ({exc.strerror})") from exc
    return _load_index(str(path.resolve()), mtime, prop)


@lru_cache(maxsize=32)
def projector(target: str) -> Transformer:
    """A WGS84 (longitude, latitude) -> `target` transformer, built once per CRS."""
    try:
        crs = CRS.from_user_input(target)
    except Exception as exc:  # pyproj.exceptions.CRSError, with a long message
        raise GeoError(f"unknown coordinate reference system {target!r}") from exc
    if not crs.is_projected:
        raise GeoError(f"{target!r} is not a projected coordinate reference system")
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def project(transformer: Transformer, lon: float, lat: float) -> tuple[float, float]:
    """Project a point; a point outside the CRS's area is Unfit."""
    x, y = transformer.transform(lon, lat)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise Unfit("the location lies outside the area of the target CRS")
    return float(x), float(y)
