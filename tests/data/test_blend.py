"""Blends of corpora (issue 20): parsing, one block space with stable ids, Learn shares, equivalences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lfr_ds.config import LFRConfig, load_config
from lfr_ds.data.blend import Blend, BlendView, blend_spec, parse_blend
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sampler import shuffled_order
from lfr_ds.errors import UserError
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase

SEQ = 64


def _learn(view: BlendView, steps: int, global_batch: int = 32) -> np.ndarray:
    rewriter = Rewriter(
        Path("."),
        LFRConfig(),
        1234,
        "fp",
        view.blend.sources,
        view.block_source,
        SEQ,
        global_batch,
        corpora=view.corpora,
    )
    return rewriter.build(Phase(0, "learn", 0, steps), None, digest="d").order


def test_learn_draws_each_corpus_at_its_weight(webmix_blend):
    news, chat, wiki = webmix_blend
    view = BlendView(Blend(f"0.5 {news} 0.3 {chat} 0.2 {wiki}"), SEQ, 1234)
    sizes = np.diff(view.corpora.offsets)
    assert (sizes / sizes.sum() - [0.5, 0.3, 0.2]).std() > 0.05  # the weights, not the sizes, must decide
    steps = -(-view.num_blocks // 32)  # one Learn pass
    order = _learn(view, steps)
    share = view.corpora.counts(order) / len(order)
    np.testing.assert_allclose(share, [0.5, 0.3, 0.2], atol=0.01)
    # Every batch already holds the mixture (the blending interleave), and each corpus is drawn as a
    # shuffle of its own blocks: no block of a corpus twice before all of its blocks once.
    first = view.corpora.counts(order[:32]) / 32
    np.testing.assert_allclose(first, [0.5, 0.3, 0.2], atol=1 / 32 + 1e-9)
    for c in range(3):
        mine = order[view.corpora.corpus_of(order) == c]
        n = int(sizes[c])
        head = mine[: min(n, len(mine))]
        assert len(np.unique(head)) == len(head)
        assert head.min() >= view.corpora.offsets[c] and head.max() < view.corpora.offsets[c + 1]


def test_block_ids_are_offset_local_ids_and_read_the_corpus_tokens(webmix_blend):
    news, chat, wiki = webmix_blend
    view = BlendView(Blend(f"0.5 {news} 0.3 {chat} 0.2 {wiki}"), SEQ, 1234)
    for c, prefix in enumerate(webmix_blend):
        alone = BlockView(open_dataset(prefix), SEQ, 1234)
        start = int(view.corpora.offsets[c])
        assert view.corpora.offsets[c + 1] - start == alone.num_blocks
        for local in (0, alone.num_blocks // 2, alone.num_blocks - 1):
            np.testing.assert_array_equal(view.tokens(start + local), alone.tokens(local))
        assert set(view.block_source[start : start + alone.num_blocks].tolist()) == {
            view.blend.sources.index(["news", "chat", "wiki"][c])
        }
    with pytest.raises(UserError, match="out of range"):
        view.tokens(view.num_blocks)


def test_megatron_string_and_yaml_list_are_the_same_blend(webmix_blend, tmp_path):
    news, chat, wiki = webmix_blend
    text = f"0.5 {news} 0.3 {chat} 0.2 {wiki}"
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"data:\n  path:\n    - {{weight: 5, path: {news}}}\n    - {{weight: 3, path: {chat}}}\n"
        f"    - {{weight: 2, path: {wiki}}}\n"
    )
    as_yaml = load_config(str(config)).data.path
    a, b = Blend(text), Blend(as_yaml)
    assert a.fingerprint == b.fingerprint  # relative weights: 5/3/2 is 0.5/0.3/0.2
    np.testing.assert_array_equal(_learn(BlendView(a, SEQ, 1234), 20), _learn(BlendView(b, SEQ, 1234), 20))
    # Any change of a weight or a corpus is another dataset.
    assert Blend(f"0.4 {news} 0.4 {chat} 0.2 {wiki}").fingerprint != a.fingerprint
    assert Blend(f"0.5 {news} 0.5 {chat}").fingerprint != a.fingerprint


def test_a_blend_of_one_is_the_prefix(webmix_blend):
    news = webmix_blend[0]
    alone = BlockView(open_dataset(news), SEQ, 1234)
    for form in (news, f"1 {news}", [{"weight": 0.7, "path": news}]):
        blend = Blend(form)
        assert blend.fingerprint == open_dataset(news).fingerprint and blend.prefix == news
        view = BlendView(blend, SEQ, 1234)
        assert view.num_blocks == alone.num_blocks
        np.testing.assert_array_equal(view.block_source, alone.block_source)
        order = _learn(view, 30)
        np.testing.assert_array_equal(order, shuffled_order(alone.num_blocks, 30 * 32, [1234, 0]))
        np.testing.assert_array_equal(view.batch(order[:8]), alone.batch(order[:8]))


def test_blend_mode_enters_the_rewrite_digest_only_when_not_default():
    focus = Phase(1, "focus", 10, 5, drop=0.5)

    def digest(options: LFRConfig) -> str:
        return Rewriter(Path("."), options, 1, "fp", [], np.zeros(8, dtype=np.int64), SEQ, 32).digest(focus, None)

    keep = digest(LFRConfig())
    assert keep == digest(LFRConfig(blend="keep"))
    assert keep != digest(LFRConfig(blend="free"))
    with pytest.raises(UserError, match=r"lfr\.blend: 'mixed'; use keep or free"):
        LFRConfig(blend="mixed")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0.3 a 0.x b", "data.path: weight '0.x' does not parse as a number"),
        ("0.3 a -0.2 b", "data.path: weight '-0.2' is negative"),
        ("0 a 0 b", "data.path: the blend's weights sum to zero"),
        ("0.3 a 0.7", "has 3 tokens, an odd number"),
        ([{"weight": 1, "prefix": "a"}], "each entry is {weight: W, path: PREFIX}"),
        ("0.5 a 0.5 a", "a prefix appears twice"),
    ],
)
def test_bad_blends_are_one_line(value, needle):
    with pytest.raises(UserError) as e:
        parse_blend(value)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_prefix_and_two_tokenizers_are_refused(webmix_blend, tmp_path):
    news = webmix_blend[0]
    with pytest.raises(UserError, match=r"missing\.idx: dataset file not found"):
        Blend(f"0.5 {news} 0.5 {tmp_path / 'missing'}")
    other = tmp_path / "other"
    for ext in (".bin", ".idx", ".doc_source.npy"):
        (tmp_path / f"other{ext}").write_bytes(Path(news + ext).read_bytes())
    meta = Path(news + ".meta.json").read_text().replace(open_dataset(news).tokenizer_sha256, "f" * 64)
    (tmp_path / "other.meta.json").write_text(meta)
    with pytest.raises(UserError, match="a blend needs one tokenizer"):
        Blend(f"0.5 {news} 0.5 {other}")


def test_spec_names_the_blend_and_empty_settings_get_their_hint():
    assert blend_spec("3 a 7 b") == "3 a 7 b" and blend_spec([{"weight": 1, "path": "a"}]) == "a"
    with pytest.raises(UserError, match=r"lfr.schedule: ''; give random, paper or phases"):
        load_config(None, ["data.path=x", "lfr.schedule="])
