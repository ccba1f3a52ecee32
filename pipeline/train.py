"""Train one stage of the DiNA inpainting GAN.

    accelerate launch pipeline/train.py CONFIG.yaml [MORE.yaml ...] [key=value ...]
    python pipeline/train.py configs/experiment/demo.yaml train.stage=edge

YAML files merge in order, then key=value overrides (see pipeline/config.py for every key).
Exit status: 0 finished; 2 bad config, set-up or data (one line naming the key, file or shards),
or no space left for a checkpoint (the earlier ones are kept); 3 stopped after too many
non-finite steps; 124 stopped by SIGTERM/SIGUSR1/Ctrl-C (the SLURM scripts requeue on it): after a
checkpoint at the next step boundary, or, when no training data comes within 20 s of the
signal (a stuck stream), at once, keeping the last checkpoint. The codes are defined in
pipeline/exit_codes.py.

One run per train.output_dir: a second one is refused (exit 2, naming the owner's host and PID);
the lock of a run that is gone (same host, PID ended) or of the same SLURM job (requeued) is
taken over with a message.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pipeline import checkpoint, exit_codes
from pipeline.build import SetupError, build_ema, build_networks, build_step_context
from pipeline.config import ConfigError, flatten, load_config, split_args, to_yaml
from pipeline.data import DataError, eval_loader, eval_pairs, train_loader
from pipeline.inference import complete_edges, inpaint, known_region_edges
from pipeline.metrics import edge_accuracy, flat_metrics
from pipeline.models.dina import resolve_backend
from pipeline.output_lock import OutputDirBusy, OutputLock
from pipeline.scoring import evaluate
from pipeline.stage_table import STAGES
from pipeline.stages import agree_on_step, step_function
from pipeline.tracking import Tracker

log = logging.getLogger("dina.train")


# model keys that change no tensor shape: a resume may change them
RESUME_MAY_DIFFER = ("model.attention.backend", "model.init_gain")

# model keys added after checkpoints were first saved, as flatten() writes them, and the value
# a checkpoint without them was trained with (pipeline/networks.py's defaults for such a
# checkpoint); the strings are what flatten() gives for the saved value
LEGACY_MODEL = {"model.hole_mask_channel": "False", "model.upsample": "transposed",
                "model.coarse_fill": "none"}

# after a stop signal, how long the loop still waits for a batch before it gives up on the
# checkpoint and stops at once (a stuck or endlessly bad data stream must not block a stop)
DATA_GRACE_S = 20.0


class StoppedWhileWaiting(BaseException):
    """No batch came within DATA_GRACE_S of a stop signal. A BaseException, so that the data
    code's `except Exception` (skip a bad sample, go on) cannot swallow it."""


class StopRequest:
    """SIGTERM/SIGUSR1/SIGINT: finish the step, checkpoint, exit for requeue. A second signal:
    exit now.
    If the next batch does not come within DATA_GRACE_S of the signal, stop without one."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.waiting_for_data = False
        # forked DataLoader workers inherit the handler; only this process acts on a signal
        self.pid = os.getpid()
        # Ctrl-C (SIGINT) as SIGTERM: checkpoint and stop; a second press exits at once
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGALRM, self._give_up)

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:
            return  # a data worker: the trainer decides when the workers stop
        if self.signum is not None:
            log.error("second signal %s: exiting at once", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint",
                    signal.Signals(signum).name)
        if self.waiting_for_data:
            signal.setitimer(signal.ITIMER_REAL, DATA_GRACE_S)

    def _give_up(self, signum, frame):
        if self.waiting_for_data:
            raise StoppedWhileWaiting(signal.Signals(self.signum).name)

    def next_batch(self, batches):
        """next(batches); after a stop signal, given at most DATA_GRACE_S."""
        self.waiting_for_data = True
        if self.signum is not None:
            signal.setitimer(signal.ITIMER_REAL, DATA_GRACE_S)
        try:
            return next(batches)
        finally:
            self.waiting_for_data = False
            signal.setitimer(signal.ITIMER_REAL, 0)


def check_output_dir(path: Path, needed_bytes: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # every rank probes: one file each
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SetupError(f"output directory {path} is not writable: {err}") from None
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise SetupError(f"output directory {path} has {free / 2**20:.0f} MiB free; the kept "
                         f"checkpoints need about {needed_bytes / 2**20:.0f} MiB: free space, "
                         f"lower train.ckpt_limit or change train.output_dir")


def lock_output_dir(acc: Accelerator, path: Path) -> Optional[OutputLock]:
    """Rank 0 takes the output directory's lock; every rank learns the outcome, so all ranks
    stop together or go on together."""
    lock, refusal = None, [None]
    if acc.is_main_process:
        lock = OutputLock(path)
        try:
            lock.acquire()
        except OutputDirBusy as err:
            refusal = [str(err)]
    if acc.num_processes > 1:
        broadcast_object_list(refusal, from_process=0)
    if refusal[0]:
        raise SetupError(refusal[0])
    return lock


def _changed_model_keys(saved: DictConfig, cfg: DictConfig) -> dict[str, tuple]:
    """{key: (saved value, this run's, saved before the key existed?)} for each model key (and
    optim.name) whose change breaks a resume."""
    def shaping(c: DictConfig) -> dict[str, str]:
        return {k: v for k, v in flatten(c).items()
                if (k.startswith("model.") or k == "optim.name") and k not in RESUME_MAY_DIFFER}

    before, now = shaping(saved), shaping(cfg)
    # a checkpoint from before a key existed was built as the key's legacy value says (what
    # pipeline/networks.py assumes when it loads one)
    legacy = {k: v for k, v in LEGACY_MODEL.items() if k not in before}
    before.update(legacy)
    return {k: (before.get(k), now.get(k), k in legacy)
            for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)}


def model_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """`key=saved (this run: now)` for each model key (and optim.name) whose change breaks a
    resume."""
    return [f"{k}={a}{' (saved before the key existed)' if old else ''} (this run: {b})"
            for k, (a, b, old) in _changed_model_keys(saved, cfg).items()]


def image_grid(batch: dict, edges: torch.Tensor, output: torch.Tensor, rows: int = 4) -> np.ndarray:
    """Rows of [masked input | edges | output | ground truth], uint8 HWC."""
    image, mask = batch["image"][:rows], batch["mask"][:rows]
    masked = image * (1 - mask) + mask
    tiles = [masked, edges[:rows].expand(-1, 3, -1, -1), output[:rows], image]
    grid = torch.cat([torch.cat(list(t.float().cpu()), dim=1) for t in tiles], dim=2)
    return (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        t = cfg.train
        # cpu=True where no GPU is visible: a multi-process launch then uses gloo on the CPU
        # (what ACCELERATE_USE_CPU=1 does), so one accelerate config serves both kinds of node
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision,
                                       gradient_accumulation_steps=t.grad_accum,
                                       cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.stop = StopRequest()  # from here on a signal means "stop cleanly at a step boundary"
        set_seed(t.seed)  # identical initial weights on every rank
        self.output_dir = Path(t.output_dir)
        nets = build_networks(cfg)
        n_params = sum(p.numel() for n in nets.values() for p in n.parameters())
        # weights + Ranger21's moments/lookahead (~4 copies), per kept checkpoint, plus one in flight
        check_output_dir(self.output_dir, n_params * 4 * 5 * (t.ckpt_limit + 1))
        self.lock = lock_output_dir(acc, self.output_dir)
        self.trained = STAGES[t.stage].trains
        self.ctx = build_step_context(cfg, acc, nets)
        self.ema = build_ema(t.stage, t.ema, acc, self.ctx.nets)
        self.step = 0
        self.resume_changes, self.resume_changes_step = "", 0
        run_id = self._resume()
        skip = self.step * t.grad_accum if cfg.data.resume == "skip" else 0
        seed = t.seed if cfg.data.resume == "skip" else t.seed + self.step
        self.loader = train_loader(cfg.data, seed, acc.process_index, acc.num_processes,
                                   skip_batches=skip)
        self.val_batch = self._validation_batch() if acc.is_main_process else None
        backend = resolve_backend(cfg.model.attention.backend, cfg.model.attention.bias, acc.device)
        self.tracker = Tracker(cfg, acc.is_main_process, backend, resume_run_id=run_id)
        if acc.is_main_process:
            log.info("stage %s | %d processes | mixed precision %s | DiNA backend %s | %.2fM params",
                     t.stage, acc.num_processes, acc.mixed_precision,
                     backend if cfg.model.attention.enabled else "off", n_params / 1e6)
        self.tracker.set_tags({"num_processes": acc.num_processes})
        if self.resume_changes:
            self.tracker.set_tags({"dina.resume_changes": f"at step {self.resume_changes_step}: "
                                                          f"{self.resume_changes}"[:5000]})

    def _resume(self) -> Optional[str]:
        """Restore state from train.resume; returns the MLflow run to continue, if any."""
        spec = self.cfg.train.resume
        if not spec:
            earlier = checkpoint.candidates(self.output_dir)
            if earlier:  # a fresh run's checkpoints would interleave with them and be pruned
                raise SetupError(
                    f"{checkpoint.checkpoint_root(self.output_dir)} already holds checkpoints "
                    f"of an earlier run (newest {earlier[0].name}); continue it with "
                    f"train.resume=latest, or train afresh with a new train.output_dir")
            return None
        if spec == "latest":
            path, broken = checkpoint.latest_valid(self.output_dir)
            if path is None and broken:
                raise checkpoint.CheckpointError(
                    f"train.resume=latest: none of the {len(broken)} checkpoints in "
                    f"{checkpoint.checkpoint_root(self.output_dir)} is usable ("
                    f"{'; '.join(broken)}); move them away to start fresh, or resume from a "
                    f"good copy with train.resume=PATH")
        else:
            path = checkpoint.resolve(spec)
        if path is None:
            log.info("resume=latest: no checkpoint in %s yet, starting fresh", self.output_dir)
            return None
        meta = checkpoint.verify(path)
        if meta.get("stage") != self.cfg.train.stage:
            raise SetupError(f"checkpoint {path} is of stage '{meta.get('stage')}', this run is "
                             f"'{self.cfg.train.stage}'")
        saved_cfg = OmegaConf.load(path / "config.yaml")
        differences = model_differences(saved_cfg, self.cfg)
        if differences:
            same = " ".join(f"{k}={a}" for k, (a, _, _) in
                            _changed_model_keys(saved_cfg, self.cfg).items())
            raise SetupError(f"checkpoint {path} was trained with {', '.join(differences)}; "
                             f"resume with the same model ({same}), or use a new "
                             f"train.output_dir")
        self._note_changes(saved_cfg, path, meta["step"])
        self.accelerator.load_state(str(path))
        self._restore_ema(path)
        self.step = meta["step"]
        log.info("resumed from %s at step %d", path, self.step)
        return meta.get("mlflow_run_id")

    def _note_changes(self, saved_cfg: DictConfig, path: Path, step: int) -> None:
        """Say which settings differ from the checkpoint's; they are kept for the MLflow run,
        whose params (logged once, immutable) still show the first values."""
        before, now = flatten(saved_cfg), flatten(self.cfg)
        changed = {k: (before.get(k), now.get(k)) for k in sorted(before.keys() | now.keys())
                   if k != "train.resume" and before.get(k) != now.get(k)}
        self.resume_changes = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        self.resume_changes_step = step
        if changed and self.accelerator.is_main_process:
            log.warning("resuming %s with changed settings (the MLflow run's params keep the "
                        "first values; tag dina.resume_changes records these): %s", path,
                        self.resume_changes)
        ema_before = float(before.get("train.ema") or 0)
        if self.ema is None and ema_before > 0 and self.accelerator.is_main_process:
            log.warning("train.ema=%s (the checkpoint's: %s): its EMA weights are dropped; "
                        "validation, the checkpoints from here on and inference use the raw "
                        "weights", now.get("train.ema"), before.get("train.ema"))

    def _restore_ema(self, path: Path) -> None:
        """The EMA saved with the checkpoint's generators; the resumed weights where it has none
        (it was trained with train.ema=0)."""
        if self.ema is None:
            return
        states = checkpoint.generator_states(path)
        saved = {n: states.get(n + checkpoint.EMA_SUFFIX) for n in self.ema.models}
        if all(state is not None for state in saved.values()):
            self.ema.load_states(saved)
        else:
            log.warning("%s holds no EMA weights: the EMA starts from the resumed weights", path)
            self.ema.reset()

    def _validation_batch(self) -> Optional[dict]:
        d = self.cfg.data
        if not d.val:
            return None
        pairs = eval_pairs(d.val, d.val_masks or d.masks, d.image_size, per_bucket=d.val_per_bucket)
        batch = next(iter(eval_loader(pairs, d.image_size, batch_size=len(pairs))))
        # scored as evaluate.py scores: edges from Canny on the known region only; the whole
        # image's edges stay as what G1 should draw in the hole
        batch["edge_truth"] = batch["edge"]
        batch["edge"] = known_region_edges(batch)
        return {k: (v.to(self.accelerator.device) if torch.is_tensor(v) else v)
                for k, v in batch.items()}

    def save(self, step: int, reason: str) -> Path:
        generators = {n: self.ctx.nets[n] for n in ("g1", "g2") if n in self.ctx.nets}
        if self.ema is not None:
            generators.update({n + checkpoint.EMA_SUFFIX: m for n, m in self.ema.models.items()})
        path = checkpoint.save(self.accelerator, str(self.output_dir), step, self.cfg, generators,
                               {"reason": reason, "mlflow_run_id": self.tracker.run_id,
                                "mlflow_tracking_uri": self.tracker.uri})
        self.tracker.record_checkpoint(path, reason)
        return path

    @torch.no_grad()
    def validate(self, step: int) -> None:
        """Sample grid and per-bucket PSNR/SSIM on the fixed validation batch (main process):
        val/* of the weights inference uses (the EMA where train.ema is on, as the sample grid),
        and with the EMA on also val_raw/* of the raw weights."""
        if self.val_batch is None or not self.accelerator.is_main_process:
            return
        # the plain modules: a compiled one would recompile for the validation batch's shape
        raw = {n: self.accelerator.unwrap_model(net, keep_torch_compile=False)
               for n, net in self.ctx.nets.items() if n in ("g1", "g2")}
        for net in raw.values():
            net.eval()
        variants = {"val/": raw}
        if self.ema is not None:
            variants = {"val/": {**raw, **self.ema.models}, "val_raw/": raw}
        for prefix, generators in variants.items():
            self._validate_weights(step, prefix, generators.get("g1"), generators.get("g2"))
        for name in self.trained:
            self.ctx.nets[name].train()

    def _validate_weights(self, step: int, prefix: str, g1: Optional[torch.nn.Module],
                          g2: Optional[torch.nn.Module]) -> None:
        batch = self.val_batch
        if g2 is None:  # edge stage: no image output to score
            edges = complete_edges(g1, batch)
            output = batch["image"] * (1 - batch["mask"])
        else:
            output, edges = inpaint(g1, g2, batch)
            # scored by the core evaluate.py uses; the output is the fill of the one batch
            summary, _ = evaluate([batch], lambda _: output, self.accelerator.device,
                                  progress=False)
            self.tracker.log_metrics(flat_metrics(summary, prefix), step)
        if "g1" in self.trained:  # G1's edges in the hole against the image's own Canny edges
            accuracy = edge_accuracy(edges, batch["edge_truth"], batch["mask"])
            self.tracker.log_metrics({prefix + k: v for k, v in accuracy.items()}, step)
        if prefix == "val/" and self.cfg.tracking.log_images:
            self.tracker.log_image(image_grid(batch, edges, output), f"samples-{step:08d}.png",
                                   "samples")

    def fit(self) -> dict:
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
        """The step loop; returns (exit status, MLflow run status)."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        step_fn = step_function(t.stage)
        per_step = cfg.data.batch_size * acc.num_processes * t.grad_accum
        batches = self._endless_batches()
        bad_streak, bad_total, first_bad = 0, 0, None
        window, window_start = [], time.perf_counter()
        bar = tqdm(total=t.steps, initial=self.step, disable=not acc.is_main_process,
                   desc=f"{t.stage}", unit="step", dynamic_ncols=True)
        exit_code, status = 0, "FINISHED"
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
                    exit_code, status = exit_codes.REQUEUE, "KILLED"
                    break
                for batch in micro_batches:
                    batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()
                             if torch.is_tensor(v)}
                    with acc.accumulate(*[self.ctx.nets[n] for n in self.trained]):
                        logs = step_fn(self.ctx, batch)
                self.step += 1
                bar.update(1)
                # the step's one host sync: finite on every rank? a stop signal on any rank?
                step_ok, stop_now = agree_on_step(acc, logs.pop("ok"),
                                                  self.stop.signum is not None)
                if step_ok:
                    # a skipped update leaves the EMA as it was too, so the checkpoint written
                    # after a non-finite streak holds the EMA from before it
                    if self.ema is not None:
                        self.ema.update(self.step)
                    bad_streak, first_bad = 0, None
                    window.append({k: v.detach() for k, v in logs.items()})  # no sync per step
                else:
                    bad_streak, bad_total = bad_streak + 1, bad_total + 1
                    first_bad = first_bad or self.step
                    log.warning("step %d: non-finite loss or gradient, update skipped "
                                "(%d in a row)", self.step, bad_streak)
                    self.tracker.log_metrics({"train/skipped_steps": bad_total}, self.step)
                    if bad_streak >= t.max_bad_steps:
                        path = self.save(first_bad - 1, "non-finite")
                        log.error("%d consecutive non-finite steps (from step %d): stopped. The "
                                  "checkpoint %s holds the state from before step %d (skipped "
                                  "updates were never applied). Lower the learning rates or check "
                                  "the data, then resume from it.", bad_streak, first_bad, path,
                                  first_bad)
                        exit_code, status = exit_codes.NONFINITE, "FAILED"
                        break
                if self.step % t.log_every == 0 and window:
                    elapsed = time.perf_counter() - window_start
                    keys = list(window[0])  # one host sync for all the means
                    values = torch.stack([torch.stack([w[k] for w in window]).float().mean()
                                          for k in keys]).tolist()
                    means = dict(zip(keys, values))
                    means["train/samples_per_s"] = len(window) * per_step / elapsed
                    means["data/skipped_samples"] = self.loader.skips.count
                    self.tracker.log_metrics(means, self.step)
                    bar.set_postfix({k.split("/", 1)[-1]: f"{v:.3g}" for k, v in means.items()
                                     if k.endswith(("/d", "/g", "samples_per_s"))})
                    window, window_start = [], time.perf_counter()
                if self.step % t.val_every == 0 or self.step == t.steps:
                    self.validate(self.step)
                # no checkpoint inside a non-finite streak: resume must start from before it
                saved = bad_streak == 0 and (self.step % t.ckpt_every == 0 or self.step == t.steps
                                             or stop_now)
                if saved:
                    self.save(self.step, "signal" if stop_now else "periodic")
                if stop_now:
                    log.warning("stopped at step %d by signal (%s); exit %d for requeue",
                                self.step, "checkpoint written" if saved else "inside a "
                                "non-finite streak: resume starts from the last checkpoint",
                                exit_codes.REQUEUE)
                    exit_code, status = exit_codes.REQUEUE, "KILLED"
                    break
        finally:
            bar.close()
        return exit_code, status

    def _endless_batches(self):
        """Training batches across stream epochs (each pass of the loader is one)."""
        while True:
            yield from self.loader


def run(sources: list[str], overrides: list[str]) -> dict:
    cfg = load_config(sources, overrides)
    trainer = Trainer(cfg)
    try:
        if trainer.accelerator.is_main_process:
            trainer.output_dir.mkdir(parents=True, exist_ok=True)
            (trainer.output_dir / "config.yaml").write_text(to_yaml(cfg))
        return trainer.fit()
    finally:
        if trainer.lock is not None:
            trainer.lock.release()


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("accelerate", "mlflow.store"):  # per-file save/migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if args else exit_codes.SETUP)
    configure_logging()
    files, overrides = split_args(args)
    try:
        result = run(files, overrides)
    except (ConfigError, SetupError, DataError, checkpoint.CheckpointError) as err:
        exit_codes.refuse(f"error: {err}")
    except KeyboardInterrupt:  # Ctrl-C before the trainer's own handler is in place
        print("train.py: interrupted (Ctrl-C) while setting up; no step was trained",
              file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    sys.exit(result["exit_code"])


if __name__ == "__main__":
    main()
