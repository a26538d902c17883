"""Training on the k-th smallest task: learning beats chance fast; models save and reload as HF folders."""

import json

import pytest
import torch

from hopscope.data.kth_smallest import KthSmallestConfig
from hopscope.train import TrainConfig, encode_prompts, load_task_info, train_kth_smallest
from hopscope.train.kth_smallest import GPT2Arch, new_gpt2
from hopscope.train.last_token import target_ids
from hopscope.train.number_tokenizer import number_tokenizer

TASK = KthSmallestConfig(n=5, k=2, pool_size=16, n_train=4000, n_val=200, n_test=300, seed=0)
ARCH = GPT2Arch(n_layers=2, n_heads=2, d_model=32, n_positions=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and kinder to shared CPUs
    try:
        out = tmp_path_factory.mktemp("kth") / "model"
        cfg = TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup=20, eval_every=100, eval_size=200, seed=0)
        return train_kth_smallest(TASK, cfg, arch=ARCH, out=out)
    finally:
        torch.set_num_threads(threads)


def test_a_few_hundred_steps_beat_chance(trained):
    m = trained.metrics
    assert m["chance_accuracy"] == pytest.approx(1 / 16)
    assert m["test_accuracy"] > 0.6  # chance is 1/16; ~0.95 in practice
    h = trained.history
    assert list(h["step"]) == [100, 200, 300]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]


def test_saved_folder_reloads_with_the_same_predictions(trained):
    import hopscope

    folder = trained.folder
    info = load_task_info(folder)
    assert info["task"] == "kth_smallest"
    assert KthSmallestConfig.from_dict(info["task_config"]) == trained.task
    assert info["metrics"]["test_accuracy"] == trained.metrics["test_accuracy"]
    assert json.loads((folder / "config.json").read_text())["n_layer"] == 2
    m = hopscope.load_model(str(folder))
    prompts = ["3 1 4 1 5", "9 2 6 5 3"]
    batch = encode_prompts(m.tokenizer, prompts)
    with torch.no_grad():
        a = trained.model(input_ids=batch.input_ids).logits[:, -1]
        b = m.model(input_ids=batch.input_ids).logits[:, -1]
    assert torch.allclose(a, b, atol=1e-5)
    assert m.to_ids(prompts[0]) == batch.input_ids[0].tolist()


def test_number_tokenizer_is_one_token_per_number():
    tok = number_tokenizer(range(20))
    assert len(tok) == 22
    assert tok("3 14 7")["input_ids"] == tok(" 3 14 7")["input_ids"] == [5, 16, 9]
    assert target_ids(tok, [" 14", "7"]).tolist() == [16, 9]
    assert tok("25", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    with pytest.raises(ValueError, match="pool value 25"):
        train_kth_smallest(KthSmallestConfig(n=3, pool=(1, 25)), TrainConfig(steps=1),
                           model=type("M", (), {"tokenizer": tok, "model": new_gpt2(tok, ARCH)})())


def test_left_padding_keeps_positions_of_real_tokens():
    tok = number_tokenizer(range(10))
    b = encode_prompts(tok, ["1 2 3", "4"])
    assert b.input_ids.shape == (2, 3)
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_unknown_tokenizer_and_bad_shapes_are_named():
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'"):
        train_kth_smallest(TASK, TrainConfig(steps=1), tokenizer="bpe")
    with pytest.raises(ValueError, match="not divisible"):
        new_gpt2(number_tokenizer(range(4)), GPT2Arch(n_heads=3, d_model=32))


def test_training_leaves_no_stale_prefix_cache():
    from hopscope.engine import run
    from hopscope.models import LoadedModel
    from hopscope.train.last_token import train_last_token

    tok = number_tokenizer(range(10))
    lm = LoadedModel(model=new_gpt2(tok, ARCH), tokenizer=tok, name="m", source="test")
    prompts = ["1 2 3 4 5 6", "1 2 3 4 5 7"]  # a shared prefix: the engine caches its keys and values
    before = run(lm, prompts, last_only=True).logits
    cfg = TrainConfig(steps=5, batch_size=2, lr=1e-2, warmup=1, eval_every=5)
    train_last_token(lm.model, encode_prompts(tok, prompts), target_ids(tok, ["1", "2"]), cfg)
    after = run(lm, prompts, last_only=True).logits
    fresh = run(lm, prompts, last_only=True, share_prefix=False).logits
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, fresh, atol=1e-5)


def test_weights_table_rebuilds_the_model_exactly(trained):
    from hopscope.train.kth_smallest import model_from_weights, weights_table

    table = weights_table(trained.model)
    assert set(table.columns) == {"name", "dtype", "shape", "data"}
    twin = model_from_weights(table, trained.tokenizer, ARCH)
    batch = encode_prompts(trained.tokenizer, ["3 1 4 1 5"])
    with torch.no_grad():
        a = trained.model(input_ids=batch.input_ids).logits
        b = twin(input_ids=batch.input_ids).logits
    assert torch.equal(a, b)
