"""Train examples/asr-digits-rnnt/asr-digits-rnnt.nemo: the transducer twin of asr-digits, a tiny Conformer
encoder with an LSTM prediction network and joint (NeMo EncDecRNNTModel, characters), trained on
CPU in minutes on the same espeak-ng speech (examples/asr-digits/make_asr_digits.py: the same sentences,
voices, variants and speeds, and the same held-out voices it never hears). It is the transducer
example (examples/asr-digits-rnnt/recipe.yaml) and a test fixture; nothing is downloaded.

    python examples/asr-digits-rnnt/make_asr_digits_rnnt.py [--minutes 16] [DEST.nemo]

The loss is the RNNT forward algorithm written here in torch, one vectorised step per encoder
frame (`rnnt_loss`): NeMo's CPU losses (warprnnt_numba's CPU path, and "pytorch") loop over every
(frame, label) cell in Python and take minutes per batch. Before training, it is checked against
NeMo's own loss on a batch of real utterances, and the script stops if they disagree. TDT models are
decoded and checked by nimbuild as well; this example is RNNT, whose loss is the simpler one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "asr-digits"))
import make_asr_digits as data  # noqa: E402  (the CTC example's speech, augmentation and scoring)

PRED_HIDDEN = 64
JOINT_HIDDEN = 96


def config(labels: list[str], durations: list[int] | None = None) -> dict:
    """The CTC example's front end and encoder, with a transducer decoder (TDT when durations are given)."""
    base = data.config(labels)
    base.pop("decoder")
    d_model = base["encoder"]["d_model"]
    cfg = {
        **base,
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": PRED_HIDDEN},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "vocab_size": len(labels),
                    "blank_as_pad": True, "prednet": {"pred_hidden": PRED_HIDDEN, "pred_rnn_layers": 1, "dropout": 0.1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": len(labels),
                  "vocabulary": labels, "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False,
                  "jointnet": {"joint_hidden": JOINT_HIDDEN, "activation": "relu", "dropout": 0.1,
                               "encoder_hidden": d_model, "pred_hidden": PRED_HIDDEN}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
    }
    if durations:
        cfg["joint"]["num_extra_outputs"] = len(durations)
        cfg["decoding"].update({"model_type": "tdt", "durations": list(durations)})
        cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": list(durations), "sigma": 0.05, "omega": 0.0}}
        cfg["model_defaults"].update({"tdt_durations": list(durations), "num_tdt_durations": len(durations)})
    return cfg


def joint_logits(model, signal, length, target, target_length):
    encoded, encoded_len = model(input_signal=signal, input_signal_length=length)
    decoded, target_length, _ = model.decoder(targets=target, target_length=target_length)
    return model.joint(encoder_outputs=encoded, decoder_outputs=decoded), encoded_len, target_length


def rnnt_loss(logits, targets, frames, labels, blank: int):
    """Mean over the batch of -log P(labels | audio), NeMo's "mean_batch" reduction. logits
    [B, T, U+1, V+1]. Row t of the lattice from row t-1 in one step: alpha[t, u] = logaddexp(
    alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1]) is a prefix sum in log space,
    C[u] + logcumsumexp(a - C) with C the running sum of the emissions along u."""
    import torch

    logp = logits.log_softmax(-1)
    batch, steps, u1, _ = logp.shape
    blank_lp = logp[..., blank]
    index = targets[:, None, :u1 - 1, None].expand(batch, steps, u1 - 1, 1).long()
    emit = logp[:, :, :-1, :].gather(-1, index).squeeze(-1)
    prefix = torch.nn.functional.pad(emit.cumsum(-1), (1, 0))  # [B, T, U+1]
    start = torch.full((batch, u1), -1e9, dtype=logp.dtype)
    start[:, 0] = 0.0
    alphas, previous = [], None
    for t in range(steps):
        a = start if previous is None else previous + blank_lp[:, t - 1]
        previous = prefix[:, t] + torch.logcumsumexp(a - prefix[:, t], dim=-1)
        alphas.append(previous)
    alpha = torch.stack(alphas, 1)
    rows = torch.arange(batch)
    last_t, last_u = frames.long() - 1, labels.long()
    return -(alpha[rows, last_t, last_u] + blank_lp[rows, last_t, last_u]).mean()


def loss(model, signal, length, target, target_length):
    logits, frames, labels = joint_logits(model, signal, length, target, target_length)
    return rnnt_loss(logits, target, frames, labels, model.decoder.blank_idx)


def check_loss(model, train_set, rng) -> None:
    """The loss written here equals NeMo's own (its numba kernel) on real utterances, or no training."""
    import torch

    with torch.no_grad():
        batch = data.collate(train_set, list(range(4)), data.LABELS, rng)
        logits, frames, labels = joint_logits(model, *batch)
        ours = float(rnnt_loss(logits, batch[2], frames, labels, model.decoder.blank_idx))
        nemo = float(model.loss(log_probs=logits, targets=batch[2], input_lengths=frames, target_lengths=labels))
    if abs(ours - nemo) > 1e-3 * abs(nemo):
        raise SystemExit(f"the RNNT loss here ({ours:.5f}) differs from NeMo's ({nemo:.5f})")
    print(f"RNNT loss checked against NeMo's: {ours:.5f} vs {nemo:.5f}", flush=True)


def new_rnnt_model():
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    return EncDecRNNTModel(cfg=OmegaConf.create(config(data.LABELS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default="examples/asr-digits-rnnt/asr-digits-rnnt.nemo", type=Path)
    parser.add_argument("--minutes", type=float, default=16.0, help="training time budget")
    args = parser.parse_args()
    data.train(args.minutes, args.dest, new_model=new_rnnt_model, loss=loss, check=check_loss)


if __name__ == "__main__":
    sys.exit(main())
