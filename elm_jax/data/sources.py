"""Config -> Catalog: the embedded default (generated offline), MovieLens, or a user's own folder.

The default is generated into the workdir once and then read by the same MovieLens loader as real data, so
every later stage is exercised identically on both. A bring-your-own folder (`folder.py`) brings its
embeddings along, so it needs neither WALS nor the text encoder.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

from elm_jax.data import build, folder, synthetic, wals
from elm_jax.data.catalog import Catalog
from elm_jax.data.movielens import RatingsData, load_movielens

RAW_SOURCES = ("default", "movielens")  # sources with MovieLens-layout raw data
SOURCES = (*RAW_SOURCES, "folder")


def load_raw(data_config: Any, data_dir: pathlib.Path) -> RatingsData:
    if data_config.source == "default":
        catalogue_dir = (
            data_dir / f"default-seed{data_config.synthetic.seed}-{data_config.synthetic.n_movies}x"
            f"{data_config.synthetic.n_users}"
        )
        if not catalogue_dir.is_dir():
            logging.info("generating the embedded default catalogue into %s", catalogue_dir)
            synthetic.write_catalogue(catalogue_dir, synthetic.SyntheticConfig(**data_config.synthetic))
        return load_movielens(catalogue_dir)
    if data_config.source == "movielens":
        if not data_config.path:
            raise ValueError("data.path must name a MovieLens folder or zip when data.source='movielens'")
        return load_movielens(data_config.path)
    raise ValueError(f"data.source={data_config.source!r} has no raw ratings to load; those that do: {RAW_SOURCES}")


def load_catalog(data_config: Any, encoder, data_dir: pathlib.Path, mesh=None) -> tuple[Catalog, RatingsData | None]:
    """The catalogue a config describes, with embeddings cached under `data_dir`, and its raw data if any.

    `encoder` is not used for a folder, whose embeddings are given; the raw data is then None.
    """
    c = data_config.catalog
    if data_config.source == "folder":
        if not data_config.path:
            raise ValueError("data.path must name a folder (docs/bring_your_own.md) when data.source='folder'")
        catalog = folder.read_folder(data_config.path, test_movies=c.test_movies, test_users=c.test_users, seed=c.seed)
        return catalog, None
    if data_config.source not in SOURCES:
        raise ValueError(f"data.source={data_config.source!r} is unknown; known: {', '.join(SOURCES)}")
    raw = load_raw(data_config, data_dir)
    config = build.CatalogConfig(
        min_ratings=c.min_ratings,
        wals=wals.WALSConfig(**c.wals),
        test_movies=c.test_movies,
        test_users=c.test_users,
        seed=c.seed,
    )
    catalog = build.build_catalog(raw, encoder.encode, str(encoder.path), config, data_dir / "embeddings", mesh)
    # The default's tags come in several wordings per attribute ("hilarious", "laugh out loud"): one concept each.
    aliases = {v: concept for concept, variants in synthetic.TAG_VARIANTS.items() for v in variants}
    catalog.tags = build.tag_concepts(raw, catalog, aliases if data_config.source == "default" else None)
    return catalog, raw
