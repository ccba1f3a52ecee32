"""The trainer: one stage's networks, data, validation, checkpoints and tracking, joined by the
step loop (pipeline/train.py is its command line)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from tqdm import tqdm

from pipeline import exit_codes
from pipeline.config import load_config, to_yaml
from pipeline.data.stream import train_loader
from pipeline.models.dina import resolve_backend
from pipeline.tracking.tracker import Tracker
from pipeline.training import checkpoint
from pipeline.training.assemble import build_ema, build_networks, build_step_context
from pipeline.training.output_dir import check_output_dir, lock_output_dir
from pipeline.training.resume import restore, resume_checkpoint
from pipeline.training.signals import DATA_GRACE_S, StoppedWhileWaiting, StopRequest
from pipeline.training.stage_table import STAGES
from pipeline.training.steps import agree_on_step, step_function
from pipeline.training.validation import Validator

log = logging.getLogger("dina.train")

# why a run ended: (exit status, MLflow run status)
FINISHED = (0, "FINISHED")
STOPPED = (exit_codes.REQUEUE, "KILLED")
DIVERGED = (exit_codes.NONFINITE, "FAILED")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("accelerate", "mlflow.store"):  # per-file save/migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


class MetricWindow:
    """The step logs since the last log point, kept on the device: one host sync per log point
    for all their means, none per step."""

    def __init__(self):
        self.logs: list[dict[str, torch.Tensor]] = []
        self.start = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        self.logs.append({k: v.detach() for k, v in logs.items()})

    def take_means(self, samples_per_step: int) -> dict[str, float]:
        """Mean of every logged value and the samples/s since the last call; starts anew."""
        keys = list(self.logs[0])
        values = torch.stack([torch.stack([w[k] for w in self.logs]).float().mean()
                              for k in keys]).tolist()
        means = dict(zip(keys, values))
        means["train/samples_per_s"] = (len(self.logs) * samples_per_step
                                        / (time.perf_counter() - self.start))
        self.logs, self.start = [], time.perf_counter()
        return means


class BadSteps:
    """The current streak of non-finite steps (their updates skipped) and the run's total."""

    def __init__(self):
        self.streak, self.total, self.first = 0, 0, None

    def good(self) -> None:
        self.streak, self.first = 0, None

    def bad(self, step: int) -> None:
        self.streak, self.total = self.streak + 1, self.total + 1
        self.first = self.first or step


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg, t = cfg, cfg.train
        # cpu=True where no GPU is visible: a multi-process launch then uses gloo on the CPU
        # (what ACCELERATE_USE_CPU=1 does), so one accelerate config serves both kinds of node
        self.accelerator = acc = Accelerator(mixed_precision=t.mixed_precision,
                                             gradient_accumulation_steps=t.grad_accum,
                                             cpu=not torch.cuda.is_available())
        self.stop = StopRequest()  # from here on a signal means "stop cleanly at a step boundary"
        self.output_dir = Path(t.output_dir)
        nets = build_networks(cfg)
        n_params = sum(p.numel() for n in nets.values() for p in n.parameters())
        # weights + Ranger21's moments/lookahead (~4 copies), per kept checkpoint, plus one in flight
        check_output_dir(self.output_dir, n_params * 4 * 5 * (t.ckpt_limit + 1))
        self.lock = lock_output_dir(acc, self.output_dir)
        self.trained = STAGES[t.stage].trains
        self.ctx = build_step_context(cfg, acc, nets)
        self.ema = build_ema(t.stage, t.ema, acc, self.ctx.nets)
        start = resume_checkpoint(cfg, self.output_dir)
        meta = restore(start, cfg, acc, self.ema) if start is not None else {}
        self.step = meta.get("step", 0)
        self.loader = self._train_loader()
        self.validator = Validator(cfg, acc, self.trained)
        backend = resolve_backend(cfg.model.attention.backend, cfg.model.attention.bias, acc.device)
        self.tracker = Tracker(cfg, acc.is_main_process, backend,
                               resume_run_id=meta.get("mlflow_run_id"))
        if acc.is_main_process:
            log.info("stage %s | %d processes | mixed precision %s | DiNA backend %s | %.2fM params",
                     t.stage, acc.num_processes, acc.mixed_precision,
                     backend if cfg.model.attention.enabled else "off", n_params / 1e6)
        self.tracker.set_tags({"num_processes": acc.num_processes})
        if meta.get("changed_settings"):
            self.tracker.set_tags({"dina.resume_changes": f"at step {self.step}: "
                                                          f"{meta['changed_settings']}"[:5000]})

    def _train_loader(self):
        """The training stream from where this run stands (data.resume: replay or reseed)."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        replay = cfg.data.resume == "skip"
        return train_loader(cfg.data, t.seed if replay else t.seed + self.step,
                            acc.process_index, acc.num_processes,
                            skip_batches=self.step * t.grad_accum if replay else 0)

    def save(self, step: int, reason: str) -> Path:
        generators = {n: self.ctx.nets[n] for n in ("g1", "g2") if n in self.ctx.nets}
        if self.ema is not None:
            generators.update({n + checkpoint.EMA_SUFFIX: m for n, m in self.ema.models.items()})
        path = checkpoint.save(self.accelerator, str(self.output_dir), step, self.cfg, generators,
                               {"reason": reason, "mlflow_run_id": self.tracker.run_id,
                                "mlflow_tracking_uri": self.tracker.uri})
        self.tracker.record_checkpoint(path, reason)
        return path

    def train(self) -> dict:
        """Train to train.steps (or a stop); the MLflow run is closed whatever happens."""
        try:
            exit_code, status = self._loop()
        except BaseException:
            self.tracker.close("FAILED")
            raise
        self.tracker.close(status)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return {"exit_code": exit_code, "step": self.step, "output_dir": str(self.output_dir),
                "run_id": self.tracker.run_id}

    def _loop(self) -> tuple[int, str]:
        """Steps until train.steps, a stop or divergence; returns why it ended."""
        t = self.cfg.train
        step_fn, batches = step_function(t.stage), self._endless_batches()
        window, bad = MetricWindow(), BadSteps()
        bar = tqdm(total=t.steps, initial=self.step, desc=t.stage, unit="step",
                   disable=not self.accelerator.is_main_process, dynamic_ncols=True)
        for net in self.trained:
            self.ctx.nets[net].train()
        try:  # the bar ends before any error message is printed
            while self.step < t.steps:
                try:
                    micro_batches = [self.stop.next_batch(batches) for _ in range(t.grad_accum)]
                except StoppedWhileWaiting as signame:
                    log.warning("%s: no training data came within %.0f s, stopped at step %d "
                                "without a new checkpoint (resume starts from the last one); "
                                "exit %d for requeue", signame, DATA_GRACE_S, self.step,
                                exit_codes.REQUEUE)
                    return STOPPED
                ended = self._train_step(step_fn, micro_batches, window, bad, bar)
                if ended:
                    return ended
        finally:
            bar.close()
        return FINISHED

    def _train_step(self, step_fn, micro_batches: list[dict], window: MetricWindow,
                    bad: BadSteps, bar: tqdm) -> Optional[tuple[int, str]]:
        """One optimizer step and what follows it: EMA, logs, validation, checkpoint; returns
        why the run ends here, if it does."""
        acc, t = self.accelerator, self.cfg.train
        for batch in micro_batches:
            batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()
                     if torch.is_tensor(v)}
            with acc.accumulate(*[self.ctx.nets[n] for n in self.trained]):
                logs = step_fn(self.ctx, batch)
        self.step += 1
        bar.update(1)
        # the step's one host sync: finite on every rank? a stop signal on any rank?
        step_ok, stop_now = agree_on_step(acc, logs.pop("ok"), self.stop.signum is not None)
        if step_ok:
            # a skipped update leaves the EMA as it was too, so the checkpoint written after a
            # non-finite streak holds the EMA from before it
            if self.ema is not None:
                self.ema.update(self.step)
            bad.good()
            window.add(logs)
        elif self._skipped(bad):
            return DIVERGED
        if self.step % t.log_every == 0 and window.logs:
            self._log_window(window, bar)
        if self.step % t.val_every == 0 or self.step == t.steps:
            self.validator(self.step, self.ctx.nets,
                           self.ema.models if self.ema is not None else None, self.tracker)
        return self._checkpoint(stop_now, in_bad_streak=bad.streak > 0)

    def _skipped(self, bad: BadSteps) -> bool:
        """Record a non-finite step; True when the streak reaches train.max_bad_steps, after a
        checkpoint of the state from before the streak."""
        bad.bad(self.step)
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)",
                    self.step, bad.streak)
        self.tracker.log_metrics({"train/skipped_steps": bad.total}, self.step)
        if bad.streak < self.cfg.train.max_bad_steps:
            return False
        path = self.save(bad.first - 1, "non-finite")
        log.error("%d consecutive non-finite steps (from step %d): stopped. The checkpoint %s "
                  "holds the state from before step %d (skipped updates were never applied). "
                  "Lower the learning rates or check the data, then resume from it.",
                  bad.streak, bad.first, path, bad.first)
        return True

    def _log_window(self, window: MetricWindow, bar: tqdm) -> None:
        cfg = self.cfg
        means = window.take_means(cfg.data.batch_size * self.accelerator.num_processes
                                  * cfg.train.grad_accum)
        means["data/skipped_samples"] = self.loader.skips.count
        self.tracker.log_metrics(means, self.step)
        bar.set_postfix({k.split("/", 1)[-1]: f"{v:.3g}" for k, v in means.items()
                         if k.endswith(("/d", "/g", "samples_per_s"))})

    def _checkpoint(self, stop_now: bool, in_bad_streak: bool) -> Optional[tuple[int, str]]:
        """The periodic, final or stop checkpoint (none inside a non-finite streak: a resume
        must start from before it); returns STOPPED on a stop signal."""
        t = self.cfg.train
        saved = not in_bad_streak and (self.step % t.ckpt_every == 0 or self.step == t.steps
                                       or stop_now)
        if saved:
            self.save(self.step, "signal" if stop_now else "periodic")
        if not stop_now:
            return None
        log.warning("stopped at step %d by signal (%s); exit %d for requeue", self.step,
                    "checkpoint written" if saved else
                    "inside a non-finite streak: resume starts from the last checkpoint",
                    exit_codes.REQUEUE)
        return STOPPED

    def _endless_batches(self):
        """Training batches across stream epochs (each pass of the loader is one)."""
        while True:
            yield from self.loader


def run(sources: list[str], overrides: list[str]) -> dict:
    """Build the trainer from config files and overrides, train, release the output dir."""
    cfg = load_config(sources, overrides)
    trainer = Trainer(cfg)
    try:
        if trainer.accelerator.is_main_process:
            trainer.output_dir.mkdir(parents=True, exist_ok=True)
            (trainer.output_dir / "config.yaml").write_text(to_yaml(cfg))
        return trainer.train()
    finally:
        if trainer.lock is not None:
            trainer.lock.release()
