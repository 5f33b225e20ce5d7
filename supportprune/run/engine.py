"""The engine: runs a list of phases in order, epoch by epoch, with checkpoints, resume and signals. It knows
no algorithm: what happens at the start and end of a phase, around an epoch and after a step is the phase's."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from supportprune.errors import SupportpruneError
from supportprune.inputs.data import reseed_epoch
from supportprune.method.support import support_sites
from supportprune.store.checkpoint import load_latest
from supportprune.run.context import RunContext
from supportprune.run.phases import Phase
from supportprune.run.run_state import RunState, restore_rng, rng_state, save_run
from supportprune.run.signals import RunInterrupted, StopRequests, exit_code, stage
from supportprune.run.training_loop import (
    DivergedError,
    EpochProgress,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_epoch,
)

CURVE_POINTS_PER_EPOCH = 20  # training loss and error are logged this often per epoch (Figure 3's curves)


def _continue_with(optimizer, scheduler, config) -> None:
    """A resumed phase continues with its recipe section's settings, which may have changed while the phase was
    unfinished (a lower lr after a divergence): the optimizer and schedule just loaded hold the earlier ones."""
    decays = [config.weight_decay, 0.0]  # make_optimizer's two groups
    for index, group in enumerate(optimizer.param_groups):
        group["momentum"], group["nesterov"] = config.momentum, config.nesterov and config.momentum > 0
        group["weight_decay"] = decays[index]
        if scheduler.base_lrs[index] != config.lr:
            scheduler.base_lrs[index] = group["initial_lr"] = config.lr
            group["lr"] = config.lr * scheduler.lr_lambdas[index](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class Engine:
    """Runs ``phases`` (each made from the run's context) from where the run directory says."""

    def __init__(self, context: RunContext, phases: Sequence[Phase], stop_requests: StopRequests, resuming: bool) -> None:
        self.context, self.stop_requests = context, stop_requests
        self.phases = list(phases)
        self.saved = self._resume() if resuming else None

    @property
    def state(self) -> RunState:
        return self.context.state

    def run(self) -> None:
        saved = self.saved
        for phase_index in range(self.state.phase_index, len(self.phases)):
            self._run_phase(phase_index, saved if phase_index == self.state.phase_index else None)
            saved = None

    # -- checkpoints ---------------------------------------------------------------------------------

    def _resume(self) -> Optional[dict[str, Any]]:
        context = self.context
        loaded = load_latest(context.layout.checkpoint)
        if loaded is None:
            return None
        saved, used, problems = loaded
        for problem in problems:
            context.reporter.message(f"warning: {problem}; resuming from {used.name}")
        context.model.load_state_dict(saved["model"])
        for phase in self.phases:
            phase.load_state_dict(saved)
        context.state = RunState(**saved["run"])
        restore_rng(saved["rng"], context.cluster, context.reporter)
        if self.state.phase_index < len(self.phases):
            where = f"{self.phases[self.state.phase_index].name} epoch {self.state.epoch + 1}"
            if self.state.step:
                where += f", step {self.state.step + 1}"
        else:
            where = "export (training finished)"
        context.reporter.message(f"resuming {context.layout.root} at {where}")
        return saved

    def _save(self, optimizer, scheduler) -> None:
        context = self.context
        rng_states = context.cluster.all_gather(rng_state())  # every rank's: each resumes its own
        if context.cluster.is_main:
            phase_states: dict[str, Any] = {}
            for phase in self.phases:
                phase_states.update(phase.state_dict())
            save_run(context.layout, context.model, optimizer, scheduler, self.state, rng_states, phase_states)
        context.cluster.barrier()

    # -- phases and epochs ---------------------------------------------------------------------------

    def _run_phase(self, phase_index: int, saved: Optional[dict[str, Any]]) -> None:
        context, phase = self.context, self.phases[phase_index]
        fresh = saved is None or saved["optimizer"] is None
        self.state.phase_index = phase_index
        with stage(f"the start of {phase.name}"):
            phase.start(fresh)
        trained = DistributedDataParallel(context.model) if context.cluster.distributed else context.model
        if context.recipe.compile:
            # Measured on an H100 (benchmarks/results/2026-11-23-h100-gpu-speed.md): under torch.compile the plain
            # tensor-op site lets inductor fuse more than the fused path's custom autograd functions do.
            for _, site in support_sites(context.model):
                site.fused = False
            trained = torch.compile(trained)
        optimizer = make_optimizer(context.model, phase.config)
        if type(phase).after_step is not Phase.after_step:
            optimizer.register_step_post_hook(lambda *_: phase.after_step())
        steps = context.steps_per_epoch()
        scheduler = make_scheduler(optimizer, phase.config, steps)
        if not fresh:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            _continue_with(optimizer, scheduler, phase.config)
        while self.state.epoch < phase.config.epochs:
            with stage(f"{phase.name} epoch {self.state.epoch + 1}"):
                self._run_epoch(phase, trained, optimizer, scheduler, steps)
        with stage(f"the end of {phase.name}"):
            phase.finish()
        self.state.phase_index, self.state.epoch = phase_index + 1, 0
        self._save(None, None)

    def _run_epoch(self, phase: Phase, trained, optimizer, scheduler, steps: int) -> None:
        context, state, reporter = self.context, self.state, self.context.reporter
        config, epoch = phase.config, state.epoch + 1
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"] if not state.partial else state.partial["lr"]
        earlier_seconds = state.partial.get("seconds", 0.0)
        progress = EpochProgress(**{k: v for k, v in state.partial.items() if k not in ("lr", "seconds")})
        reseed_epoch(context.train_loader, context.recipe.seed, len(state.metrics), start_step=progress.step)
        before_batch = phase.before_epoch(epoch)
        every = context.recipe.checkpoint_every_steps
        curve_every = max(1, steps // CURVE_POINTS_PER_EPOCH)
        stopped = False

        def stop_after(progress: EpochProgress) -> bool:
            nonlocal stopped
            if progress.step % curve_every == 0 or progress.step == steps:
                self._curve_point(phase.name, epoch, steps, progress)
            stopped = context.cluster.any(self.stop_requests.signal_name is not None)  # every rank stops together
            if stopped or (every and progress.step % every == 0 and progress.step < steps):
                self._check_finite()
                elapsed = earlier_seconds + time.perf_counter() - started
                state.step, state.partial = progress.step, {**asdict(progress), "lr": lr, "seconds": elapsed}
                self._save(optimizer, scheduler)
            return stopped

        reporter.start(f"{phase.name} {epoch}/{config.epochs}", steps)
        try:
            with self.stop_requests.deferred():  # a stop waits for the step to finish and the checkpoint
                progress = self._train_epoch(phase, trained, optimizer, scheduler, progress, stop_after, before_batch)
                if stopped:
                    reporter.stop()
                    signal_name = self.stop_requests.signal_name or "a signal to another process"
                    raise RunInterrupted(
                        f"stopped by {signal_name} at {phase.name} epoch {epoch}, step {progress.step}: checkpoint "
                        f"written to {context.layout.checkpoint}; run the same command again to resume",
                        exit_code(signal_name))
            self._check_finite()
        except DivergedError as error:
            reporter.stop()
            kept = "checkpoints/last.pt" if context.layout.checkpoint.exists() else "no checkpoint yet"
            raise DivergedError(
                f"{phase.name} epoch {epoch}: {error} at learning rate {optimizer.param_groups[0]['lr']:.3g} "
                f"({phase.name}.lr {config.lr:g} in the recipe); stopped, last good checkpoint kept ({kept}); "
                f"lower {phase.name}.lr in the recipe and run the same command again: it resumes there"
            ) from None
        reporter.stop()
        phase.after_steps(epoch)
        total_loss, total_correct, total_seen = context.cluster.all_reduce_sum([progress.loss_sum, progress.correct, progress.seen])
        loss, top1 = total_loss / total_seen, 100.0 * total_correct / total_seen
        record: dict[str, Any] = {"phase": phase.name, "epoch": epoch, "train_loss": loss, "train_top1": top1, "lr": lr}
        phase.after_epoch(epoch, record)
        record["val_loss"], record["val_top1"] = evaluate(context.model, context.val_loader, context.device,
                                                          reduce=context.cluster.all_reduce_sum)
        phase.after_evaluation(record)
        record["seconds"] = time.perf_counter() - started + earlier_seconds
        state.metrics.append(record)
        state.epoch, state.step, state.partial = epoch, 0, {}
        reporter.message(
            f"{phase.name} {epoch}/{config.epochs}: loss {loss:.4f}, train top-1 {top1:.2f}%, "
            f"val top-1 {record['val_top1']:.2f}% ({record['seconds']:.1f}s)"
        )
        self._save(optimizer, scheduler)

    def _train_epoch(self, phase: Phase, trained, optimizer, scheduler, progress, stop_after, before_batch) -> EpochProgress:
        context, reporter = self.context, self.context.reporter
        return train_epoch(
            trained, context.train_loader, optimizer, scheduler, context.device, progress=progress,
            max_steps=context.max_steps, stop_after=stop_after,
            bf16=context.recipe.precision == "bf16", channels_last=context.recipe.channels_last,
            before_batch=before_batch, loss_fn=phase.loss_fn,
            on_step=lambda step, loss, top1: reporter.advance(step, loss=loss, top1=top1),
        )

    def _curve_point(self, phase: str, epoch: int, steps: int, progress: EpochProgress) -> None:
        """Append the mean training loss and error of the steps since the last point (Figure 3's curves)."""
        epoch_number = len(self.state.metrics)
        mark = self.state.curve_mark if self.state.curve_mark[0] == epoch_number else [epoch_number, 0.0, 0, 0]
        seen = progress.seen - mark[3]
        if seen <= 0:
            return
        loss = (progress.loss_sum - mark[1]) / seen
        error = 100.0 * (1.0 - (progress.correct - mark[2]) / seen)
        self.state.curve.append([phase, (epoch - 1) * steps + progress.step, loss, error])
        self.state.curve_mark = [epoch_number, progress.loss_sum, progress.correct, progress.seen]

    def _check_finite(self) -> None:
        """A step can leave non-finite weights (or batch-norm statistics) behind a finite loss: never
        checkpoint those."""
        state = self.context.model.state_dict()
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise DivergedError("the weights became non-finite")
