"""The shipped default model's training run (resumable: rerun the same command).

    python training/prepare_wallpapers.py /work/wallpapers
    nice -n 10 python training/train_default.py charbonnier   # or: l2 (the loss comparison run beside it)
    nice -n 10 python training/train_default.py l2 /work/train_run/l2/model.safetensors l2b 6000 5e-4
        # stage 2: continue the shipped L2 run with a fresh, lower cosine cycle
    nice -n 10 python training/train_default.py l2 /work/train_run/l2b/model.safetensors l3 7000 4e-4 4
        # stage 3: the same from stage 2, with the block grid 4 LR px in (JPEG block edges mid-block)
    nice -n 10 python training/train_default.py l2 /work/train_run/l2b/model.safetensors l3s 7000 4e-4 4 0.2
        # the same with the seam loss (weight 0.2), side by side

Starts from the previous default model (7,200 steps of clean one-step training, kept in git history
as the first shipped model) with a new degradation-strength input (zero-initialised, so the start is
exactly the old model), and trains on photographs and illustrations with real-world LR degradations
(30 % clean). Two runs with the same settings but the loss ran side by side, one thread each, for the
model card's loss comparison; the better one was shipped with
`python training/ship_default.py /work/train_run/<loss>/ckpt_NNNNN.safetensors --sigma 0.003`.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from infdit_cli.train import TrainConfig, train

torch.set_num_threads(1)
loss = sys.argv[1] if len(sys.argv) > 1 else "charbonnier"
start_from = sys.argv[2] if len(sys.argv) > 2 else "/work/train_run/start.safetensors"
run_name = sys.argv[3] if len(sys.argv) > 3 else loss
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3600
lr = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3
block_offset = int(sys.argv[6]) if len(sys.argv) > 6 else 0
seam_weight = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
out = Path(f'/work/train_run/{run_name}')
cfg = TrainConfig(data='/work/wallpapers/train', out=str(out), preset='small',
  overrides=dict(hidden_size=128, num_layers=4, num_heads=2, mlp_hidden=512, block_size=32, denoise_cond=True,
                 block_offset=block_offset),
  steps=steps, batch_size=8, crop=96, lr=lr, warmup=100, cosine=True, ema=0.995, grad_clip=1.0,
  objective='one-step', sigma=0.004, sample_sigma=0.003, p_resize=0.1, val_every=250, save_every=250,
  val_data='/work/wallpapers/val384', resume=True, seed=1, device='cpu',
  degrade=True, p_clean=0.3, loss=loss, init_from=start_from, seam_weight=seam_weight)
def cb(p):
    if p.val_loss is not None:
        print(json.dumps({'step': p.step, 'loss': p.loss, 'val': p.val_loss, 'gain_db': p.val_psnr_gain,
                          'sec': round(p.seconds), 'time': time.strftime('%H:%M:%S')}), flush=True)
    if p.step % 250 == 0 or p.step == cfg.steps:
        # save_checkpoint ran just before this callback: keep a copy per checkpoint for the model card table
        shutil.copy(out / 'model.safetensors', out / f'ckpt_{p.step:05d}.safetensors')
r = train(cfg, cb)
print('done', r.steps, r.seconds)
