"""What tests/integration/test_ddp_torchrun.py runs under torchrun (2 ranks, Gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_driver.py DATA OUT [fail]

Every rank writes its own records to OUT, for the test to compare:

* ``step.rank{r}.json``: one DDP step on a fixed batch of 3 crops (split 2 + 1)
  against a single-process step on all 3, with the trainer's loss;
* ``straight.rank{r}.jsonl``: a pgps-performance run (run folder OUT/straight),
  one line per step (patch, batch, crops, a digest of the weights after it) and
  the Finished event;
* ``split.rank{r}.jsonl``: the same run in OUT/split, stopped by rank 1 after
  step 4 (the test resumes it with the command line);
* ``rpss.rank{r}.jsonl``: a short RPSS run (random patch per step, no run folder).

With ``fail``, only a run in OUT/failed whose rank 1 raises after step 4.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_pgps import train
from napari_pgps.config import RunConfig
from napari_pgps.engine import TrainingControl, distributed, losses, trainer
from napari_pgps.data.fingerprint import CaseFingerprint, Fingerprint
from napari_pgps.engine.resolve import resolve_config
from napari_pgps.events import Finished, StepDone
from napari_pgps.models import build_network, training_outputs

STOP_AFTER_STEP = 4
networks: list[torch.nn.Module] = []


def _capturing_build_network(*args, **kwargs):
    """The trainer's network factory, keeping each network so its weights can be digested after every step."""
    network = build_network(*args, **kwargs)
    networks.append(network)
    return network


def quick_config(data: str, schedule: str) -> RunConfig:
    config = RunConfig()
    config.data.path = data
    config.data.max_cases = 6
    config.model.patch_size = (16, 16, 16)
    config.model.base_channels = 8
    config.curriculum.schedule = schedule
    config.training.epochs = 2
    config.training.iterations_per_epoch = 3
    config.training.batch_size = 3
    config.training.validate_every = 1
    config.training.device = "cpu"
    # fp32: these runs are compared weight for weight, and a bf16 step whose gradient is not finite (redone in
    # fp32, see the trainer) does not happen at the same step in every run
    config.training.mixed_precision = False
    return config


def digest(network: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in network.parameters())).hexdigest()


def record_run(events, path: Path, control: TrainingControl | None = None,
               stop_rank: int | None = None, fail_rank: int | None = None) -> None:
    """Write this rank's steps (and a digest of the weights after each) and the Finished event; stop or fail on cue."""
    rank = torch.distributed.get_rank()
    with open(path, "w") as handle:
        for event in events:
            if isinstance(event, StepDone):
                line = {k: event.to_dict()[k] for k in ("step", "epoch", "patch", "batch", "loss", "crop_cases", "crop_origins")}
                handle.write(json.dumps({**line, "weights": digest(networks[-1])}) + "\n")
                if event.step == STOP_AFTER_STEP and rank == stop_rank:
                    control.stop()
                if event.step == STOP_AFTER_STEP and rank == fail_rank:
                    raise RuntimeError(f"injected failure on rank {rank}")
            elif isinstance(event, Finished):
                handle.write(json.dumps(event.to_dict()) + "\n")


def step_against_single_process(context: distributed.DistributedContext) -> dict:
    """One DDP step against one single-process step on the union of the ranks' crops (global batch 3 -> 2 + 1)."""
    config = RunConfig()
    config.model.patch_size = (16, 16, 16)
    config.model.base_channels = 8
    fingerprint = Fingerprint(["MRI"], {"case": CaseFingerprint((1.0, 1.0, 1.0), (32, 32, 32), 1.0)},
                              [np.zeros(0, np.float32)])
    config = resolve_config(config, labels={0: "background", 1: "a", 2: "b"}, channels=["MRI"],
                            fingerprint=fingerprint, device=torch.device("cpu"))
    torch.manual_seed(0)
    initial = build_network(config.model)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn((3, 1, 16, 16, 16), generator=generator)
    labels = torch.randint(0, 3, (3, 1, 16, 16, 16), generator=generator)
    world = context.world_size
    shares = [distributed.split_batch(3, distributed.DistributedContext(r, world)) for r in range(world)]
    start = sum(shares[: context.rank])
    mine = slice(start, start + shares[context.rank])

    def sgd_step(model, loss_fn, x, y):
        parameters = list(model.parameters())
        loss = loss_fn(training_outputs(model, x), y)
        loss.backward()
        grads = [p.grad.detach().clone() for p in parameters]
        with torch.no_grad():
            for p in parameters:
                p -= 0.1 * p.grad
        return loss.detach(), grads, [p.detach().clone() for p in parameters]

    cpu = torch.device("cpu")
    ref_loss, ref_grads, ref_weights = sgd_step(copy.deepcopy(initial), losses.training_loss(True), images, labels)
    ddp = distributed.wrap(copy.deepcopy(initial), cpu, context)
    loss, grads, weights = sgd_step(ddp, losses.training_loss(True, across_ranks=True), images[mine], labels[mine])
    # The same DDP step with the single-process loss (local batch Dice, unweighted CE) must miss: the test can tell.
    naive = distributed.wrap(copy.deepcopy(initial), cpu, context)
    _, naive_grads, _ = sgd_step(naive, losses.training_loss(True), images[mine], labels[mine])

    def largest(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    return {
        "crops": shares[context.rank],
        "loss": distributed.mean_over_ranks(loss, context),
        "reference_loss": float(ref_loss),
        "grad_difference": largest(grads, ref_grads),
        "weight_difference": largest(weights, ref_weights),
        "largest_grad": max(float(g.abs().max()) for g in ref_grads),
        "naive_grad_difference": largest(naive_grads, ref_grads),
    }


def main(data: str, out: Path, fail: bool) -> None:
    trainer.build_network = _capturing_build_network
    with distributed.process_group(torch.device("cpu")) as (context, _):
        rank = context.rank
        if fail:
            events = train(quick_config(data, "pgps-performance"), out / "failed")
            record_run(events, out / f"failed.rank{rank}.jsonl", fail_rank=1)
            return
        (out / f"step.rank{rank}.json").write_text(json.dumps(step_against_single_process(context)))
        record_run(train(quick_config(data, "pgps-performance"), out / "straight"), out / f"straight.rank{rank}.jsonl")
        control = TrainingControl()
        events = train(quick_config(data, "pgps-performance"), out / "split", control=control)
        record_run(events, out / f"split.rank{rank}.jsonl", control, stop_rank=1)
        config = quick_config(data, "rpss")
        config.training.iterations_per_epoch = 4
        record_run(train(config), out / f"rpss.rank{rank}.jsonl")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), fail=sys.argv[3:] == ["fail"])
