"""The DeblurGAN training loop as a library (WGAN-GP critic + perceptual generator loss).

One iteration = one generator forward, `critic_updates` critic steps with gradient penalty on the same batch,
then one generator step (as the authors' `optimize_parameters`). Checkpoints are atomic and carry everything
needed to resume bit-for-bit on the same hardware: models, optimizers, schedulers, RNG states, data position.
The pieces around the loop live beside it: `ema`, `sampler` (resumable sharding), `distributed` (torchrun),
`state` (RNG states, checkpoint files, CSV logs) and `samples` (the labelled sample grid).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deblurgan.checkpoint import atomic_save, load_checkpoint, load_state_dict_strict, make_checkpoint
from deblurgan.config import config_to_dict
from deblurgan.data import takes_item_seed
from deblurgan.errors import CheckpointError, DeblurGANError
from deblurgan.fsutil import atomic_write_text
from deblurgan.inference import pad_to_multiple
from deblurgan.io import write_image
from deblurgan.layers import resolve_kernels
from deblurgan.losses import (
    PerceptualLoss,
    compute_gp,
    critic_loss,
    generator_adv_loss,
    pixel_loss,
    wasserstein_estimate,
)
from deblurgan.metrics import psnr_ssim, to_uint8
from deblurgan.networks import Critic, Generator
from deblurgan.vgg import load_vgg19_features

from .config import TrainConfig, to_dict
from .distributed import average_gradients, broadcast_module, setup_distributed
from .ema import EMA
from .graphed import GraphedStep
from .sampler import ResumableSampler
from .samples import labeled_row, stack_rows
from .state import append_csv_row, plain_lrs, rng_state, set_rng_state, step_checkpoints, truncate_csv

LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "loss_g_adv", "loss_content", "gp", "wasserstein", "loss_pixel",
              "lr", "it_per_s", "img_per_s", "time"]  # fmt: skip
LOSS_NAMES = ["loss_d", "loss_g", "loss_g_adv", "loss_content", "gp", "wasserstein", "loss_pixel"]
VAL_FIELDS = ["step", "epoch", "psnr", "ssim", "psnr_input", "ssim_input", "weights"]


class TrainingDiverged(DeblurGANError):
    """A loss became NaN/inf (WGAN training can diverge)."""


# --- pure pieces (tested on their own) ------------------------------------------------------------


def lr_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """The paper's schedule: 1 for `epochs_constant` epochs, then linear decay to 0 over `epochs_decay`."""
    if epoch < epochs_constant:
        return 1.0
    if epochs_decay == 0:
        return 0.0
    return max(0.0, 1.0 - (epoch - epochs_constant) / epochs_decay)


def zero_last_conv(gen: nn.Module) -> None:
    """Zero the weights and bias of the generator's last convolution (not the paper's N(0, 0.02) init).

    With `learn_residual` the output is clamp(B + tanh(conv(...))), so the generator starts as the identity
    instead of adding a large random residual; the last conv's gradient is not zero, so it still learns.
    """
    last = [mod for mod in gen.modules() if isinstance(mod, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def resolve_run_kernels(choice: str, device: torch.device) -> str:
    """torch | triton for this device: 'auto' picks, 'triton' where it cannot run is a one-line error."""
    kernels = resolve_kernels(choice, device)
    if kernels == "triton":
        from kernels import triton_runs_on

        if not triton_runs_on(device):
            raise DeblurGANError("--kernels triton needs a CUDA device and the triton package (use auto or torch)")
    return kernels


def lr_schedule_values(cfg: TrainConfig, epochs: list[int]) -> list[float]:
    """The learning rate at the start of each of `epochs`."""
    return [cfg.optim.lr * lr_factor(e, cfg.optim.epochs_constant, cfg.optim.epochs_decay) for e in epochs]


# --- the trainer ----------------------------------------------------------------------------------


def _check_cuda_graph(device: torch.device, world: int) -> None:
    """What engine.config cannot know before the device is resolved (compile + cuda_graph is refused there)."""
    if device.type != "cuda":
        raise DeblurGANError(f"--cuda-graph needs a CUDA device (the run is on {device}); drop --cuda-graph")
    if world > 1:
        raise DeblurGANError("--cuda-graph supports one process only (not torchrun with several)")


class Trainer:
    """Train a DeblurGAN generator/critic pair into `run_dir`.

    `train_set`/`val_set` yield {"blur", "sharp"} 3xHxW tensors in [-1, 1]. `resume=True` continues from the
    newest checkpoint in `run_dir`. `vgg`: an already loaded VGG features module (else `cfg.loss.vgg_weights`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | os.PathLike,
        train_set: Dataset,
        val_set: Dataset | None = None,
        resume: bool = False,
        vgg: nn.Module | None = None,
        vgg_source: str = "given",
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # Everything that can fail on user input happens before any file is written.
        if vgg is None:
            vgg, self.vgg_source = load_vgg19_features(cfg.loss.vgg_weights)
        else:
            self.vgg_source = vgg_source
        if len(train_set) == 0:
            raise DeblurGANError("the training set is empty")
        if not resume and self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("step_*.pt")):
            raise DeblurGANError(f"{self.run_dir} already has checkpoints: pass --resume, or choose another --name")
        self.rank, self.world, self.device = setup_distributed(cfg.device)
        if cfg.cuda_graph:
            _check_cuda_graph(self.device, self.world)
        if self.device.type == "cuda":  # training crops have one size: cuDNN's autotuner pays off after a step
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        m = cfg.model
        # the one place `kernels` is resolved: for this device, into both networks' configs (and so checkpoints)
        self.kernels = resolve_run_kernels(m.kernels, self.device)
        self.gen = Generator(replace(m.generator, kernels=self.kernels)).to(self.device)
        if m.zero_init_last:
            zero_last_conv(self.gen)
        self.critic_config = replace(m.critic, kernels=self.kernels)
        self.critic = Critic(self.critic_config).to(self.device)
        self.perceptual = PerceptualLoss(vgg, normalize=cfg.loss.vgg_normalize).to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        for mod in (self.gen, self.critic, self.perceptual):
            mod.to(memory_format=self.memory_format)
        if self.world > 1:  # ranks are seeded differently: start from rank 0's weights (before the EMA copy)
            broadcast_module(self.gen)
            broadcast_module(self.critic)  # the critic is not wrapped in DDP (see _step)

        o = cfg.optim
        flags = {"fused": True} if (o.fused_adam and self.device.type == "cuda") else {}
        if cfg.cuda_graph:
            flags["capturable"] = True
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=self._lr(o.lr), betas=(o.beta1, o.beta2), **flags)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=self._lr(o.lr), betas=(o.beta1, o.beta2), **flags)
        if cfg.cuda_graph:  # the eager warm-up iterations before capture are expected: no warning about them
            for opt in (self.opt_g, self.opt_d):
                opt._warned_capturable_if_run_uncaptured = True
        sched = lambda e: lr_factor(e, o.epochs_constant, o.epochs_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, sched)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, sched)
        self.ema = EMA(self.gen, cfg.ema) if cfg.ema > 0 else None

        self.gen_fwd: nn.Module = self.gen
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.gen_fwd = nn.parallel.DistributedDataParallel(self.gen, device_ids=ids, broadcast_buffers=False)
        self.critic_fwd: Any = self.critic
        if cfg.compile:
            # The GP's double backward cannot go through a compiled graph: it uses the eager critic.
            self.gen_fwd = torch.compile(self.gen_fwd)
            self.critic_fwd = torch.compile(self.critic)

        self.graphed = GraphedStep(self._step) if cfg.cuda_graph else None

        self.train_set, self.val_set = train_set, val_set
        # our datasets take their training randomness from the sampler (resumes are exact with workers); others
        # get plain indices
        self.sampler = ResumableSampler(len(train_set), cfg.seed, self.rank, self.world, takes_item_seed(train_set))
        self.steps_per_epoch = self.sampler.per_rank // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise DeblurGANError(
                f"batch_size {cfg.data.batch_size} is larger than the training set share per process "
                f"({self.sampler.per_rank} images)"
            )
        self.total_epochs = o.epochs_constant + o.epochs_decay
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_psnr, self.best_step = -math.inf, -1
        self.last_checkpoint: Path | None = None
        self.tb = None
        self.time_up = False
        if resume:
            self._resume()

    # -- one iteration ---------------------------------------------------------------------------

    def _lr(self, lr: float) -> float | torch.Tensor:
        """A float, or a device tensor under CUDA graphs (the schedule then updates it in place)."""
        return torch.tensor(float(lr), device=self.device) if self.cfg.cuda_graph else float(lr)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp == "bf16":  # the autocast weight cache cannot live across graph replays
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.cfg.cuda_graph)
        return contextlib.nullcontext()

    def train_step(self, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        """One iteration; returns [loss_d, loss_g, loss_g_adv, loss_content, gp, wasserstein, loss_pixel] (detached).

        L_G = adv_weight * (-mean D(G(B))) + content_weight * perceptual + pixel_weight * L1(G(B), S); the paper
        is adv_weight 1, content_weight 100, pixel_weight 0. The unweighted terms are returned. With
        `cuda_graph` the iteration is captured once (after a few eager ones) and replayed (engine/graphed.py).
        """
        blur = blur.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        sharp = sharp.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        if self.graphed is not None:
            return self.graphed(blur, sharp)
        return self._step(blur, sharp)

    def _step(self, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        """The iteration on device tensors in the model's memory format; no host synchronisation in here."""
        cfg, n = self.cfg, sharp.shape[0]
        with self._autocast():
            fake = self.gen_fwd(blur)
        fake_d = fake.detach()
        both = torch.cat([sharp, fake_d])  # one critic pass for both: InstanceNorm is per-sample, so it is exact
        for _ in range(cfg.optim.critic_updates):
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                scores = self.critic_fwd(both)
                d_real, d_fake = scores[:n], scores[n:]
                gp = compute_gp(self.critic, sharp, fake_d, cfg.loss.gp_weight, cfg.loss.gp_norm, self.kernels)
                loss_d = critic_loss(d_real, d_fake) + gp
            loss_d.backward()
            average_gradients(self.critic, self.world)  # by hand: DDP's hooks do not support the GP's double backward
            self.opt_d.step()
        self.critic.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        lc = cfg.loss
        with self._autocast():
            adv = generator_adv_loss(self.critic_fwd(fake))
            zero = adv.new_zeros(())
            content = self.perceptual(fake, sharp) if lc.content_weight > 0 else zero  # weight 0: skip the VGG
            pixel = pixel_loss(fake, sharp) if lc.pixel_weight > 0 else zero
            loss_g = lc.adv_weight * adv + lc.content_weight * content + lc.pixel_weight * pixel
        loss_g.backward()
        self.opt_g.step()
        self.critic.requires_grad_(True)
        if self.ema is not None:
            self.ema.update()
        w = wasserstein_estimate(d_real, d_fake)
        return torch.stack([loss_d, loss_g, adv, content, gp, w, pixel]).detach().float()

    # -- the loop --------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        self.sampler.set_position(self.epoch, self.batch_in_epoch * self.cfg.data.batch_size)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch),  # keeps the global RNG untouched
        )

    def _done(self) -> bool:
        return (self.epoch >= self.total_epochs or (self.cfg.max_steps > 0 and self.step >= self.cfg.max_steps)
                or self.time_up)  # fmt: skip

    def _check_time(self) -> bool:
        """Whether `time_limit_s` has passed (rank 0 decides for every rank, every `log_every` steps)."""
        limit = self.cfg.time_limit_s
        if limit <= 0:
            return False
        if self.world == 1:
            self.time_up = time.perf_counter() - self.t_start >= limit
        elif self.step % self.cfg.log_every == 0:
            flag = torch.tensor([float(time.perf_counter() - self.t_start >= limit)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            self.time_up = bool(flag.item())
        return self.time_up

    def fit(self) -> dict:
        """Train to the end (or `max_steps`); returns the final metrics dict (also in metrics.json)."""
        cfg = self.cfg
        if self._done():  # e.g. --resume of a finished run: keep its logs and metrics as they are
            if self.is_main:
                msg = f"nothing to do: the run is complete (step {self.step}, epoch {self.epoch}/{self.total_epochs}"
                print(f"{msg}; raise --epochs-constant/--epochs-decay or --max-steps to train on)", file=sys.stderr)
            path = self.run_dir / "metrics.json"
            return json.loads(path.read_text()) if path.is_file() else {"step": self.step, "epoch": self.epoch}
        if self.is_main:
            self._open_logs()
        total = self.total_epochs * self.steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=min(self.step, total), unit="it", dynamic_ncols=True, file=sys.stderr)
        t0, window, t_win = time.perf_counter(), [], time.perf_counter()
        self.t_start, self.time_up = t0, False
        last_val = None
        while not self._done():
            self.gen.train()
            for batch in self._loader():
                losses = self.train_step(batch["blur"], batch["sharp"]).tolist()  # one host sync per step
                self.step += 1
                self.batch_in_epoch += 1
                if not all(math.isfinite(v) for v in losses):
                    self._diverged(losses)
                window.append(losses)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(d=f"{losses[0]:.3g}", g=f"{losses[1]:.3g}", W=f"{losses[5]:.3g}", refresh=False)
                if self.step % cfg.log_every == 0 and self.is_main:
                    now = time.perf_counter()
                    self._log_train(window, now - t_win)
                    window, t_win = [], now
                if cfg.max_steps and self.step >= cfg.max_steps:
                    break  # saved (with a validation) below
                if self._check_time():
                    msg = f"time limit ({cfg.time_limit_s:g} s) reached at step {self.step}: validating and saving"
                    if bar is not None:
                        bar.write(msg, file=sys.stderr)
                    elif self.is_main:
                        print(msg, file=sys.stderr)
                    break
                if self.step % cfg.save_every == 0:
                    pause = time.perf_counter()
                    self.save()
                    t_win += time.perf_counter() - pause
            pause = time.perf_counter()
            if self.batch_in_epoch >= self.steps_per_epoch:  # a full epoch
                self.epoch += 1
                self.batch_in_epoch = 0
                self.sched_g.step()
                self.sched_d.step()
                if self.epoch % cfg.val_every_epochs == 0 or self._done():
                    last_val = self.validate()
                self.save(val=last_val)
            elif self._done():  # stopped by max_steps or time_limit_s in the middle of an epoch
                last_val = self.validate()
                self.save(val=last_val)
            t_win += time.perf_counter() - pause  # throughput counts training only
        if bar is not None:
            bar.close()
        if self.is_main and window:
            self._log_train(window, time.perf_counter() - t_win)
        summary = self._write_metrics(last_val)
        self._close_logs()
        if self.world > 1:
            torch.distributed.barrier()
        return summary

    def _diverged(self, losses: list[float]) -> None:
        bad = ", ".join(f"{n}={v}" for n, v in zip(LOSS_NAMES, losses, strict=True) if not math.isfinite(v))
        where = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint saved yet"
        raise TrainingDiverged(
            f"non-finite loss at step {self.step} ({bad}): training diverged; {where} "
            f"(resume with --resume and a lower --lr, or --gp-weight/--critic-updates changes)"
        )

    # -- validation and samples ------------------------------------------------------------------

    def eval_model(self) -> tuple[nn.Module, str]:
        """The model used for validation/export: the EMA weights when enabled, else the generator."""
        if self.ema is None:
            return self.gen, "generator"
        model = copy.deepcopy(self.gen)  # not Generator(...): its init would consume the global RNG
        model.load_state_dict(self.ema.state_dict())
        return model, "ema"

    @torch.no_grad()
    def validate(self) -> dict | None:
        """PSNR/SSIM on the validation set (rank 0), a sample grid, and the best checkpoint's bookkeeping."""
        if self.val_set is None or len(self.val_set) == 0 or not self.is_main:
            if self.world > 1:
                torch.distributed.barrier()
            return None
        model, which = self.eval_model()
        model.eval()
        n = len(self.val_set)
        if self.cfg.data.val_max_images:
            n = min(n, self.cfg.data.val_max_images)
        scores, rows = [], []
        for i in range(n):
            item = self.val_set[i]
            blur = item["blur"].unsqueeze(0).to(self.device)
            with self._autocast():
                h, w = blur.shape[-2:]
                out = model(pad_to_multiple(blur))[0, :, :h, :w].float()
            a, b, blurred = to_uint8(out), to_uint8(item["sharp"]), to_uint8(item["blur"])
            scores.append(psnr_ssim(a, b) + psnr_ssim(blurred, b))  # restored, and the blurred input as a baseline
            if len(rows) < self.cfg.samples:
                rows.append(labeled_row(blurred, a, b, psnr_in=scores[-1][2], psnr_out=scores[-1][0]))
        self.gen.train()
        psnr, ssim, psnr_in, ssim_in = (float(np.mean([s[k] for s in scores])) for k in range(4))
        val = {"step": self.step, "epoch": self.epoch, "psnr": psnr, "ssim": ssim, "psnr_input": psnr_in,
               "ssim_input": ssim_in, "weights": which}  # fmt: skip
        if rows:
            grid = stack_rows(rows)
            write_image(self.run_dir / "samples" / f"step_{self.step:08d}.png", grid)
            write_image(self.run_dir / "samples" / "latest.png", grid)
            if self.tb is not None:
                self.tb.add_image("val/blurred_restored_sharp", grid, self.step, dataformats="HWC")
        append_csv_row(self.val_csv, VAL_FIELDS, val)
        if self.tb is not None:
            self.tb.add_scalar("val/psnr", psnr, self.step)
            self.tb.add_scalar("val/ssim", ssim, self.step)
        if self.world > 1:
            torch.distributed.barrier()
        return val

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        train_state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "opt_g": plain_lrs(self.opt_g.state_dict()),
            "opt_d": plain_lrs(self.opt_d.state_dict()),
            "sched_g": plain_lrs(self.sched_g.state_dict()),
            "sched_d": plain_lrs(self.sched_d.state_dict()),
            "rng": rng_state(),
            "best_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
            "best_step": self.best_step,
        }
        extra: dict[str, Any] = {
            "critic": {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()},
            "critic_config": config_to_dict(self.critic_config),
            "train_state": train_state,
            "config": to_dict(self.cfg),
        }
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        return make_checkpoint(self.gen, **extra)

    def save(self, val: dict | None = None) -> Path | None:
        """Write step_N.pt atomically (rank 0), keep the newest `keep_last`, update best.pt on a better PSNR."""
        if not self.is_main:
            return None
        is_best = val is not None and val["psnr"] > self.best_psnr
        if is_best:
            self.best_psnr, self.best_step = val["psnr"], self.step
        ckpt = self.checkpoint()
        path = atomic_save(ckpt, self.ckpt_dir / f"step_{self.step:08d}.pt")
        self.last_checkpoint = path
        if is_best:
            atomic_save(ckpt, self.ckpt_dir / "best.pt")
        for old in step_checkpoints(self.ckpt_dir)[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def _resume(self) -> None:
        ckpts = step_checkpoints(self.ckpt_dir)
        if not ckpts:
            raise DeblurGANError(f"--resume: no checkpoints in {self.ckpt_dir}")
        for path in reversed(ckpts):  # the newest readable one (atomic saves make a bad file very unlikely)
            try:
                ckpt = load_checkpoint(path, map_location="cpu")
                break
            except CheckpointError as e:
                print(f"warning: skipping {e}", file=sys.stderr)
        else:
            raise DeblurGANError(f"--resume: no readable checkpoint in {self.ckpt_dir}")
        load_state_dict_strict(self.gen, ckpt["generator"], str(path))
        load_state_dict_strict(self.critic, ckpt["critic"], str(path))
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                self.ema = EMA(self.gen, self.cfg.ema)
        ts = ckpt["train_state"]
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(ts[key])
            self._restore_opt_settings(opt)
        self.sched_g.load_state_dict(ts["sched_g"])
        self.sched_d.load_state_dict(ts["sched_d"])
        self.step, self.epoch, self.batch_in_epoch = ts["step"], ts["epoch"], ts["batch_in_epoch"]
        if self.batch_in_epoch >= self.steps_per_epoch:  # the data changed size since: start the next epoch
            self.batch_in_epoch = 0
        self.best_psnr = ts["best_psnr"] if ts.get("best_psnr") is not None else -math.inf
        self.best_step = ts.get("best_step", -1)
        if ts.get("world_size", 1) == self.world and self.rank == 0:
            set_rng_state(ts["rng"])
        else:  # other ranks (or a different world size) reseed deterministically
            torch.manual_seed(self.cfg.seed + self.rank + 1000 * self.step)
        self.last_checkpoint = path
        if self.is_main:
            # half-written temp files of a killed run (never loaded): fsutil names them .<stem>.<random>.tmp.pt
            for tmp in self.ckpt_dir.glob(".*.tmp.pt"):
                tmp.unlink(missing_ok=True)
            print(f"resumed from {path} (step {self.step}, epoch {self.epoch})", file=sys.stderr)

    def _restore_opt_settings(self, opt: torch.optim.Optimizer) -> None:
        """After `load_state_dict`: this run's fused/capturable flags and lr kind, not the saving run's."""
        for group in opt.param_groups:
            group.update({k: opt.defaults[k] for k in ("fused", "capturable", "foreach") if k in opt.defaults})
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] = self._lr(group[key])
        # fused/capturable Adam keeps its step count on the device, plain Adam on the host (on the device it would
        # cost a host sync per parameter per step); load_state_dict placed it by the saving run's flags
        for group in opt.param_groups:
            on_device = bool(group.get("fused")) or bool(group.get("capturable"))
            for p in group["params"]:
                state = opt.state.get(p, {})
                if "step" in state:
                    step = state["step"]
                    state["step"] = step.to(p.device, torch.float32) if on_device else step.cpu()

    # -- logs ------------------------------------------------------------------------------------

    def _open_logs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.train_csv = self.run_dir / "train_log.csv"
        self.val_csv = self.run_dir / "val_log.csv"
        for path, names in ((self.train_csv, LOG_FIELDS), (self.val_csv, VAL_FIELDS)):
            truncate_csv(path, names, self.step)  # rows logged after the checkpoint we resumed from
        try:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, TensorBoard hides what the interrupted run logged after the checkpoint (as the CSVs drop it)
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1 if self.step else None)
        except ImportError:
            print("TensorBoard logging is off (pip install tensorboard); CSV logs are in the run folder",
                  file=sys.stderr)  # fmt: skip

    def _close_logs(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _log_train(self, window: list[list[float]], seconds: float) -> None:
        mean = np.mean(np.array(window), axis=0).tolist()
        row = dict(zip(LOSS_NAMES, mean, strict=True))
        it_s = len(window) / max(seconds, 1e-9)
        row.update(step=self.step, epoch=self.epoch, lr=float(self.opt_g.param_groups[0]["lr"]), it_per_s=it_s,
                   img_per_s=it_s * self.cfg.data.batch_size * self.world, time=time.time())  # fmt: skip
        append_csv_row(self.train_csv, LOG_FIELDS, row)
        if self.tb is not None:
            for k in LOG_FIELDS[2:-1]:
                self.tb.add_scalar(f"train/{k}", row[k], self.step)

    def _write_metrics(self, val: dict | None) -> dict:
        summary = {
            "step": self.step,
            "epoch": self.epoch,
            "val": val,
            "best": {"psnr": self.best_psnr, "step": self.best_step} if math.isfinite(self.best_psnr) else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "vgg_weights": self.vgg_source,
            "seconds": time.perf_counter() - self.t_start,
            "stopped_by_time_limit": self.time_up,
            "world_size": self.world,
        }
        if self.is_main:
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        return summary
