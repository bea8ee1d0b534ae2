"""The embedded default: data, prompt encoder, pipeline, seeds, training, judge."""

import numpy as np
import pytest
import torch

from ditguide.metrics.frechet import frechet_distance, gaussian_stats
from ditguide.metrics.toy import ToyReference, judge_outputs, toy_metrics
from ditguide.toy.data import DIGIT_WORDS, load_split, prompt_for, to_unit
from ditguide.toy.judge import load_judge, save_judge, train_judge
from ditguide.toy.pipeline import image_ids, pack, unpack
from ditguide.toy.prompt_encoder import ToyPromptEncoder


def test_split_is_fixed_disjoint_and_stratified():
    train, heldout = load_split("train"), load_split("heldout")
    assert len(train.labels) + len(heldout.labels) == 1797
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(heldout.labels))
    # disjoint: no held-out image equals a train image at the same... compare as byte rows
    train_rows = {im.tobytes() for im in train.images}
    assert sum(im.tobytes() in train_rows for im in heldout.images) < 5  # a few exact duplicates exist in the raw data
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert np.array_equal(load_split("train").labels, train.labels)
    with pytest.raises(ValueError, match="split must be"):
        load_split("test")


def test_pack_unpack_roundtrip_and_ids():
    x = torch.randn(3, 8, 8)
    assert torch.equal(unpack(pack(x)), x)
    assert pack(x).shape == (3, 16, 4)
    # token 0 is the top-left 2x2 patch
    assert torch.equal(pack(x)[:, 0], x[:, :2, :2].reshape(3, 4))
    ids = image_ids()
    assert ids.shape == (16, 3) and ids[5].tolist() == [0, 1, 1]


def test_prompt_encoder_deterministic_and_empty_prompt_is_zero_pooled():
    enc = ToyPromptEncoder().eval()
    a = enc(["a handwritten digit seven", ""])
    b = enc(["a handwritten digit seven", ""])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.count_nonzero(a[1][1]) == 0 and torch.count_nonzero(a[1][0]) > 0
    ids = enc.tokenize(["the number seven"])
    assert ids[0, 2] == enc._index["seven"]
    with pytest.raises(ValueError, match="at most 8"):
        enc.tokenize(["one two three four five six seven eight nine"])
    assert prompt_for(7) == "a handwritten digit seven" and DIGIT_WORDS[7] == "seven"


def test_sample_is_identical_alone_or_in_a_batch(random_toy_pipeline):
    pipe = random_toy_pipeline
    prompts = [prompt_for(i) for i in range(5)]
    batch = pipe(
        prompt=prompts, indices=[10, 11, 12, 13, 14], guidance_scale=2.0, num_inference_steps=4, output_type="pt"
    ).images
    alone = pipe(prompt=prompts[3], indices=[13], guidance_scale=2.0, num_inference_steps=4, output_type="pt").images
    # Same noise (index 13) and same math; rows of a batched matmul may round differently, so 1e-6.
    torch.testing.assert_close(alone[0], batch[3], rtol=0, atol=1e-6)
    other_seed = pipe(
        prompt=prompts[3], indices=[99], guidance_scale=2.0, num_inference_steps=4, output_type="pt"
    ).images
    assert (other_seed[0] - batch[3]).abs().max() > 1e-3


def test_pipeline_bad_input_is_rejected_before_sampling(random_toy_pipeline):
    pipe = random_toy_pipeline
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(prompt="one", guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(prompt="one", num_inference_steps=0)
    with pytest.raises(ValueError, match="indices has 2 entries"):
        pipe(prompt="one", indices=[0, 1])


def test_embeds_path_equals_prompt_path_and_saved_pipeline_reloads(random_toy_pipeline, tmp_path):
    from ditguide.toy.pipeline import ToyPipeline

    pipe = random_toy_pipeline
    ref = pipe(prompt=["one", "two"], guidance_scale=3.0, num_inference_steps=3, output_type="pt").images
    emb, pooled = pipe.encode_prompt(["one", "two"])
    nemb, npooled = pipe.encode_prompt(["", ""])
    via_embeds = pipe(
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=nemb,
        negative_pooled_prompt_embeds=npooled,
        guidance_scale=3.0,
        num_inference_steps=3,
        output_type="pt",
    ).images
    assert torch.equal(ref, via_embeds)
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    assert (tmp_path / "p" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ToyPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(prompt=["one", "two"], guidance_scale=3.0, num_inference_steps=3, output_type="pt").images
    assert torch.equal(ref, again)


def test_a_few_training_steps_reduce_the_loss_and_write_atomically(tmp_path):
    from ditguide.toy.train import ToyTrainConfig, train_toy

    torch.set_num_threads(1)
    log = train_toy(tmp_path / "model", ToyTrainConfig(steps=40, batch_size=32, lr=3e-3), progress=False)
    assert np.mean(log["loss"][-10:]) < np.mean(log["loss"][:10])
    assert (tmp_path / "model" / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left behind
    with pytest.raises(ValueError, match="prompt_dropout"):
        ToyTrainConfig(prompt_dropout=0.0)
    with pytest.raises(ValueError, match="at least 6 blocks"):
        ToyTrainConfig(num_layers=1, num_single_layers=2)


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + 1.0
    fd = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    # N(0, I) vs N(1, 4I) in 3-d: |mu|^2 + tr(I + 4I - 2*2I) = 3 + 3 = 6
    assert abs(fd - 6.0) < 0.3
    assert abs(frechet_distance(*gaussian_stats(a), *gaussian_stats(a))) < 1e-8


def test_judge_metrics_on_real_digits(tmp_path):
    heldout, train = load_split("heldout"), load_split("train")
    judge = train_judge(to_unit(heldout.images), heldout.labels, epochs=150)
    save_judge(judge, tmp_path / "j.safetensors")
    judge2 = load_judge(tmp_path / "j.safetensors")
    f1, _ = judge_outputs(judge, to_unit(train.images[:50]))
    f2, _ = judge_outputs(judge2, to_unit(train.images[:50]))
    assert np.array_equal(f1, f2)
    ref = ToyReference.from_images(judge, to_unit(heldout.images))
    real = toy_metrics(judge, to_unit(train.images), train.labels, ref)
    assert real["accuracy"] > 0.9 and real["clip"] > 0.8
    shuffled = toy_metrics(judge, to_unit(train.images), np.roll(train.labels, 1), ref)
    assert shuffled["accuracy"] < 0.3
    noise = toy_metrics(judge, np.random.default_rng(0).uniform(size=(500, 8, 8)), train.labels[:500], ref)
    assert noise["fd"] > 10 * real["fd"]
    with pytest.raises(ValueError, match="shape"):
        judge_outputs(judge, np.zeros((3, 4, 4)))
    with pytest.raises(FileNotFoundError, match="dvc repro train_judge"):
        load_judge(tmp_path / "missing.safetensors")


def test_pack_unpack_rgb_any_size():
    x = torch.randn(2, 16, 12, 3)
    tokens = pack(x)
    assert tokens.shape == (2, 8 * 6, 12)
    assert torch.equal(unpack(tokens, 16, 12), x)
    assert torch.equal(tokens[:, 1], x[:, :2, 2:4].reshape(2, 12))  # token 1: rows 0-1, cols 2-3
    assert image_ids(height=16, width=12)[7].tolist() == [0, 1, 1]


def test_prompt_encoder_refuses_words_outside_its_vocabulary():
    enc = ToyPromptEncoder().eval()
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['seven7'\].*vocabulary: .*seven"):
        enc.tokenize(["a handwritten digit seven7"])


@pytest.mark.parametrize(
    "kwargs,message", [({"epochs": 0}, "epochs=0"), ({"seed": -1}, "seed=-1"), ({"epochs": 2.5}, "epochs=2.5")]
)
def test_judge_parameters_are_checked_before_training(kwargs, message):
    images = np.zeros((2, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=rf"train_judge {message} is not allowed"):
        train_judge(images, np.array([0, 1]), **kwargs)
