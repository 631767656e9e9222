"""The default catalogue end to end through the data layer: load, WALS, semantic embeddings, split, CAVs."""

import dataclasses

import numpy as np
import pytest

from elm_jax.data import build, cavs, synthetic, wals
from elm_jax.data.movielens import load_movielens
from elm_jax.encoder import TextEncoder
from tests import fixtures

SMALL = synthetic.SyntheticConfig(n_movies=1000, n_users=800, seed=3)
FAST_WALS = wals.WALSConfig(rank=16, iterations=6, alpha=2.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_movielens(synthetic.write_catalogue(tmp_path_factory.mktemp("default") / "ml", SMALL))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(tmp_path_factory.mktemp("enc")))


def test_builds_a_catalog_with_both_spaces_and_a_disjoint_split(data, encoder, tmp_path):
    config = build.CatalogConfig(wals=FAST_WALS)
    catalog = build.build_catalog(data, encoder.encode, "tiny-bert", config, tmp_path)
    n_movies, n_users = len(catalog.movies), len(catalog.users)
    counts = np.bincount(np.searchsorted(data.movie_ids, data.ratings.movie), minlength=len(data.movie_ids))
    assert n_movies == int((counts >= 5).sum())  # movies with fewer than 5 ratings are dropped
    assert catalog.movies.embeddings["behavioral"].shape == (n_movies, 16)
    assert catalog.users.embeddings["behavioral"].shape == (n_users, 16)
    semantic = catalog.movies.embeddings["semantic"]
    assert semantic.shape == (n_movies, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(semantic, axis=1), 1.0, rtol=1e-5)
    assert catalog.movies.texts[0] == data.plots[int(catalog.movies.ids[0])]
    assert len(catalog.test["movie"]) == round(0.1 * n_movies) and len(catalog.test["user"]) == round(0.2 * n_users)
    assert catalog.ratings.nnz == int((counts[np.searchsorted(data.movie_ids, data.ratings.movie)] >= 5).sum())


def test_second_build_reuses_the_cache_and_a_changed_setting_does_not(data, encoder, tmp_path):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return encoder.encode(texts)

    config = build.CatalogConfig(wals=FAST_WALS)
    first = build.build_catalog(data, counting, "tiny-bert", config, tmp_path)
    second = build.build_catalog(data, counting, "tiny-bert", config, tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.movies.embeddings["semantic"], second.movies.embeddings["semantic"])
    build.build_catalog(data, counting, "tiny-bert", build.CatalogConfig(wals=FAST_WALS, min_ratings=6), tmp_path)
    assert len(calls) == 2


def test_edited_data_is_not_served_from_the_cache(data, encoder, tmp_path):
    """The cache key covers the texts encoded and the ratings themselves, not just their counts and sums."""
    config = build.CatalogConfig(wals=FAST_WALS)
    before = build.build_catalog(data, encoder.encode, "tiny-bert", config, tmp_path)
    movie = int(before.movies.ids[0])
    replot = dataclasses.replace(data, plots={**data.plots, movie: "a completely different plot"})
    after = build.build_catalog(replot, encoder.encode, "tiny-bert", config, tmp_path)
    np.testing.assert_allclose(
        after.movies.embeddings["semantic"][0],
        build.semantic_embeddings([["a completely different plot"]], encoder.encode)[0],
        atol=1e-6,  # encoded in another batch: float32 rounding only
    )
    # One user's ratings of two movies swapped: same count and sums of users, movies and ratings.
    r = data.ratings
    i, j = np.flatnonzero((r.user == r.user[0]) & (r.rating != r.rating[0]))[0], 0
    rating = r.rating.copy()
    rating[[i, j]] = rating[[j, i]]
    swapped = dataclasses.replace(data, ratings=dataclasses.replace(r, rating=rating))
    moved = build.build_catalog(swapped, encoder.encode, "tiny-bert", config, tmp_path)
    assert not np.allclose(moved.users.embeddings["behavioral"], before.users.embeddings["behavioral"])
    assert len(list(tmp_path.glob("embeddings-*.npz"))) == 3


def test_movies_without_a_plot_get_the_text_their_vector_encodes(data, encoder, tmp_path):
    kept = build.build_catalog(data, encoder.encode, "tiny-bert", build.CatalogConfig(wals=FAST_WALS), tmp_path)
    movie = int(kept.movies.ids[1])
    partial = dataclasses.replace(data, plots={k: v for k, v in data.plots.items() if k != movie})
    catalog = build.build_catalog(partial, encoder.encode, "tiny-bert", build.CatalogConfig(wals=FAST_WALS), tmp_path)
    assert catalog.movies.texts[0] == data.plots[int(kept.movies.ids[0])]
    assert catalog.movies.texts[1].startswith(catalog.movies.names[1] + ". Genres: ")


def test_wals_beats_popularity_on_held_out_ratings_of_the_default_catalogue(data):
    users = np.searchsorted(np.unique(data.ratings.user), data.ratings.user)
    items = np.searchsorted(data.movie_ids, data.ratings.movie)
    (tu, ti, tv), (hu, hi, hv) = wals.split_heldout(users, items, data.ratings.rating, fraction=0.2, seed=0)
    n, m = users.max() + 1, len(data.movie_ids)
    train, heldout = wals.ratings_csr(tu, ti, tv, n, m), wals.ratings_csr(hu, hi, hv, n, m)
    uf, vf = wals.fit_wals(tu, ti, tv, n, m, wals.WALSConfig(rank=32, iterations=10, alpha=5.0, l2=20.0))
    ours = wals.recall_ndcg_at_k(uf, vf, train, heldout, k=20)
    pop = wals.popularity_scores(train)
    baseline = wals.recall_ndcg_at_k(np.ones((n, 1), np.float32), pop[:, None], train, heldout, k=20)
    assert ours["recall@20"] > 1.5 * baseline["recall@20"], (ours, baseline)  # measured: 0.41 vs 0.19
    assert ours["ndcg@20"] > 1.5 * baseline["ndcg@20"], (ours, baseline)


def test_tag_cavs_of_the_default_catalogue_are_learnable(data, encoder, tmp_path):
    catalog = build.build_catalog(data, encoder.encode, "tiny-bert", build.CatalogConfig(wals=FAST_WALS), tmp_path)
    aliases = {variant: concept for concept, variants in synthetic.TAG_VARIANTS.items() for variant in variants}
    concepts = build.tag_concepts(data, catalog, aliases)
    attributes = {c: rows for c, rows in concepts.items() if c in synthetic.TAG_VARIANTS}
    assert len(attributes) >= 8  # tag wordings ("hilarious", "creepy") map back to their attribute
    learned = cavs.learn_cavs(catalog.movies.embeddings["behavioral"], attributes, "behavioral", min_positives=15)
    assert learned and np.mean([c.accuracy for c in learned.values()]) > 0.6
