"""PRM engine output -> step scores, for both shapes vLLM returns (no vLLM needed).

vLLM 0.32 honours STEP pooling for the testbed PRM (one row per step tag); vLLM 0.26 returns a
row for every prompt token (``DispatchPooler.for_seq_cls`` hard-wired ``AllPool``), which made
the GPU bench rank solutions by the separator after the last tag.
"""

from types import SimpleNamespace

import pytest
import torch

from tts_ray.engines.prm import engine_step_tag_id, step_scores_from_output

TAG = 7
# prompt tokens, then three steps, each closed by the tag (7) and a separator (1)
IDS = [2, 40, 41, 42, 50, 51, TAG, 1, 52, 53, TAG, 1, 54, TAG, 1]
TAG_POSITIONS = [i for i, t in enumerate(IDS) if t == TAG]
STEP_SCORES = [0.9, 0.2, 0.6]


def _all_tokens(shape_2d: bool) -> torch.Tensor:
    """What vLLM 0.26 returns: a score at every token, the step scores at the tag positions and
    something else (here 0.01, the separator looking like a confident "bad") elsewhere."""
    values = [0.01] * len(IDS)
    for pos, score in zip(TAG_POSITIONS, STEP_SCORES):
        values[pos] = score
    data = torch.tensor(values, dtype=torch.bfloat16)
    return data[:, None] if shape_2d else data


@pytest.mark.parametrize("shape_2d", [True, False])
def test_all_token_output_is_cut_to_the_tag_positions(shape_2d):
    scores = step_scores_from_output(_all_tokens(shape_2d), IDS, TAG)
    assert scores == pytest.approx(STEP_SCORES, abs=1e-2)
    assert scores[-1] == pytest.approx(0.6, abs=1e-2)  # the last step, not the separator's 0.01


@pytest.mark.parametrize("shape_2d", [True, False])
def test_step_pooled_output_passes_unchanged(shape_2d):
    data = torch.tensor(STEP_SCORES, dtype=torch.float32)
    data = data[:, None] if shape_2d else data
    assert step_scores_from_output(data, IDS, TAG) == pytest.approx(STEP_SCORES)


def test_without_tag_or_token_ids_the_output_is_only_flattened():
    data = torch.tensor([[0.1], [0.2]])
    assert step_scores_from_output(data, None, TAG) == pytest.approx([0.1, 0.2])
    assert step_scores_from_output(_all_tokens(True), IDS, None) == pytest.approx(
        [float(x) for x in _all_tokens(False).float()])


def test_as_many_tags_as_tokens_reads_the_same_either_way():
    ids = [TAG, TAG, TAG]
    assert step_scores_from_output(torch.tensor([[0.3], [0.4], [0.5]]), ids, TAG) == pytest.approx(
        [0.3, 0.4, 0.5])


def test_no_tag_in_an_all_token_output_gives_no_scores():
    assert step_scores_from_output(torch.tensor([0.5, 0.5]), [3, 4], TAG) == []


def test_nested_lists_work_like_tensors():
    rows = _all_tokens(True).float().tolist()
    assert step_scores_from_output(rows, IDS, TAG) == pytest.approx(STEP_SCORES, abs=1e-2)


def test_engine_step_tag_id_reads_the_pooler_config():
    llm = SimpleNamespace(model_config=SimpleNamespace(pooler_config=SimpleNamespace(step_tag_id=TAG)))
    assert engine_step_tag_id(llm) == TAG
    assert engine_step_tag_id(SimpleNamespace(model_config=SimpleNamespace(pooler_config=None))) is None
    assert engine_step_tag_id(object()) is None
