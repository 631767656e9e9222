"""Config -> Catalog: the embedded default (generated offline), MovieLens, or a user's MovieLens-layout folder.

The default is generated into the workdir once and then read by the same MovieLens loader as real data, so
every later stage is exercised identically on both.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

from elm_jax.data import build, synthetic, wals
from elm_jax.data.catalog import Catalog
from elm_jax.data.movielens import RatingsData, load_movielens

SOURCES = ("default", "movielens")


def load_raw(data_config: Any, data_dir: pathlib.Path) -> RatingsData:
    if data_config.source == "default":
        folder = (
            data_dir / f"default-seed{data_config.synthetic.seed}-{data_config.synthetic.n_movies}x"
            f"{data_config.synthetic.n_users}"
        )
        if not folder.is_dir():
            logging.info("generating the embedded default catalogue into %s", folder)
            synthetic.write_catalogue(folder, synthetic.SyntheticConfig(**data_config.synthetic))
        return load_movielens(folder)
    if data_config.source == "movielens":
        if not data_config.path:
            raise ValueError("data.path must name a MovieLens folder or zip when data.source='movielens'")
        return load_movielens(data_config.path)
    raise ValueError(f"data.source={data_config.source!r} is unknown; known: {', '.join(SOURCES)}")


def load_catalog(data_config: Any, encoder, data_dir: pathlib.Path, mesh=None) -> tuple[Catalog, RatingsData]:
    """The catalogue a config describes, with embeddings cached under `data_dir`."""
    raw = load_raw(data_config, data_dir)
    c = data_config.catalog
    config = build.CatalogConfig(
        min_ratings=c.min_ratings,
        wals=wals.WALSConfig(**c.wals),
        test_movies=c.test_movies,
        test_users=c.test_users,
        seed=c.seed,
    )
    return build.build_catalog(raw, encoder.encode, str(encoder.path), config, data_dir / "embeddings", mesh), raw
