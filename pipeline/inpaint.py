"""Inpaint one image of any size, or a folder of them, with a trained checkpoint.

    python pipeline/inpaint.py --checkpoint CKPT_DIR --image IMG --mask MASK --out OUT.png
    python pipeline/inpaint.py --checkpoint CKPT_DIR --images DIR --masks DIR --out OUT_DIR

Folders (pipeline.evaluation.folder_inference): the mask of photo.jpg is masks/photo.* or
masks/photo_mask.*; each output is OUT_DIR/photo.png; a progress bar runs; bad pairs are skipped
and listed with their reasons (exit status 2 once the others are done); outputs already in
OUT_DIR are skipped, so a re-run finishes what an interrupted one left.

How any size is handled: the networks were trained on square images of one size (the
checkpoint's data.image_size), so the image is reflect-padded to a square (keeping its aspect
ratio), resized to that size, inpainted (G1 edges -> G2), and the prediction is resized back to
full resolution. Only the hole pixels are replaced: every known pixel of the output is the input's
own pixel, bit for bit. The model sees a hole that covers every full-resolution hole pixel (a
low-resolution pixel is a hole if any pixel under it is), so no hole content leaks into the input.
Fine detail inside large holes is therefore limited by the model's resolution.

The mask must have the image's size, white = hole (>= 128 after greyscale conversion; a mask
stored as 0/1 values reads 1 as white); --invert-mask for black holes.

Nearly binary masks (JPEG ringing) are accepted: values are thresholded at 128 as long as at most
1 % of the pixels lie between 32 and 223; anything greyer is refused as not a mask.

Output formats: --out's extension picks one. PNG, BMP, TIFF, PPM and WebP (written lossless) keep
every known pixel bit-exact. JPEG cannot: it changes known pixels too (by tens of levels near
edges), so .jpg/.jpeg is refused unless --allow-lossy is given, and then the report says so.
--out is checked (extension, a writable folder) before the model runs, and written under a
temporary name then renamed, so a failed run leaves an existing file as it was.
"""
from __future__ import annotations

import argparse

import torch

from pipeline import exit_codes
from pipeline.evaluation.any_size import inpaint_image
from pipeline.evaluation.folder_inference import plan_folder, run_folder
from pipeline.evaluation.image_files import (InpaintError, output_format, read_mask, read_rgb,
                                             write_output)
from pipeline.evaluation.inference import InferenceError, load_model
from pipeline.tracking.model_source import ModelSourceError, local_checkpoint
from pipeline.tracking.runs import default_uri


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Inpaint one image of any size with a trained checkpoint.",
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint dir, a run output dir (its latest checkpoint), or an MLflow "
                        "model URI (runs:/RUN_ID, models:/MODEL_ID, models:/NAME/VERSION; "
                        "server from $MLFLOW_TRACKING_URI)")
    p.add_argument("--edge-checkpoint", help="take G1 from this checkpoint instead")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw trained weights; by default a checkpoint's EMA weights "
                        "(train.ema) are used where it holds them")
    p.add_argument("--image", help="image file, any size")
    p.add_argument("--mask", help="mask file of the same size, white = hole")
    p.add_argument("--images", help="a folder of images (with --masks; --out is then a folder)")
    p.add_argument("--masks", help="a folder of masks named as the images (or <stem>_mask.*)")
    p.add_argument("--invert-mask", action="store_true", help="black = hole")
    p.add_argument("--out", required=True,
                   help="output image; .png/.bmp/.tif/.ppm/.webp keep known pixels bit-exact")
    p.add_argument("--allow-lossy", action="store_true",
                   help="allow a .jpg/.jpeg --out (known pixels then change too)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not ((args.image and args.mask and not (args.images or args.masks))
            or (args.images and args.masks and not (args.image or args.mask))):
        p.error("give --image and --mask (one image) or --images and --masks (folders)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.images:
        try:
            plan = plan_folder(args.images, args.masks, args.out)
            if plan.todo:
                g1, g2, info = load_model(local_checkpoint(args.checkpoint, default_uri()),
                                          args.edge_checkpoint, args.device, args.raw_weights)
                run_folder(plan, g1, g2, int(info["cfg"].data.image_size), args.device,
                           args.invert_mask)
        except (InpaintError, InferenceError, ModelSourceError) as err:
            exit_codes.refuse(f"inpaint.py: error: {err}")
        print(plan.report())
        if plan.bad:
            exit_codes.refuse(f"inpaint.py: error: {len(plan.bad)} bad pair(s) skipped, listed "
                              f"above; the other images are done")
        return
    try:
        fmt = output_format(args.out, args.allow_lossy)
        rgb = read_rgb(args.image)
        hole = read_mask(args.mask, (rgb.shape[1], rgb.shape[0]), args.invert_mask)
        if not hole.any():
            raise InpaintError(f"mask {args.mask} has no hole pixels (white = hole; "
                               f"--invert-mask if the holes are black)")
        if hole.all():
            raise InpaintError(f"mask {args.mask} is all hole: no known pixel to inpaint from "
                               f"(white = hole; --invert-mask if the holes are black)")
        checkpoint = local_checkpoint(args.checkpoint, default_uri())
        g1, g2, info = load_model(checkpoint, args.edge_checkpoint, args.device,
                                  args.raw_weights)
        size = int(info["cfg"].data.image_size)
        out, done = inpaint_image(rgb, hole, g1, g2, size, args.device)
        write_output(args.out, out, fmt)
    except (InpaintError, InferenceError, ModelSourceError) as err:
        exit_codes.refuse(f"inpaint.py: error: {err}")
    h, w = hole.shape
    ratio = done["hole_pixels"] / hole.size
    steps = [f"image {w}x{h}, hole {100 * ratio:.1f} % ({done['hole_pixels']} pixels)"]
    if ratio > 0.6:
        steps.append("note: the model was trained on holes up to 60 %")
    if (h, w) != (size, size):
        padded = f"reflect-padded to {done['square']}x{done['square']}, " if h != w else ""
        steps.append(f"{padded}resized to {size}x{size} for the model, prediction resized back")
    exact = ("known pixels unchanged" if fmt[0] != "JPEG" else
             "known pixels are NOT bit-exact: JPEG changed them too (--allow-lossy)")
    weights = ("EMA weights" if info["weights"] == "ema" else
               "raw weights" + (" (--raw-weights)" if args.raw_weights else
                                " (the checkpoint holds no EMA)"))
    steps.append(f"G1 -> G2 from {info['path']} (step {info['meta'].get('step')}, {weights}) "
                 f"on {args.device}; only hole pixels replaced, {exact}")
    print("; ".join(steps) + f"\nwrote {args.out}")


if __name__ == "__main__":
    exit_codes.run_interruptible(main, "inpaint.py", "--out is as it was (written only when "
                                                     "complete)")
