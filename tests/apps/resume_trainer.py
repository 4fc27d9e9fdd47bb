"""A tiny MONAI training run with ResumeCheckpoint, started as a script by tests/apps/test_training.py.

    python resume_trainer.py OUT_DIR MAX_EPOCHS [KILL_AT_ITERATION]

A BasicUNet on random 32² crops of two random 2D images (random crop, flip and affine: MONAI transforms with their
own random states; shuffled loader), Adam with a StepLR schedule, validation DSC after each epoch with the best
epoch written by AtomicCheckpointSaver. KILL_AT_ITERATION: the process SIGKILLs itself right after that iteration
(mid-epoch). At the end: OUT_DIR/final.pt (the network's state dict) and OUT_DIR/summary.json.
"""

import json
import os
import signal
import sys

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, ValidationHandler, from_engine
from monai.losses import DiceLoss
from monai.networks.nets import BasicUNet
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    RandAffined,
    RandFlipd,
    RandSpatialCropd,
)
from monai.utils import set_determinism

from monai_fovea.apps.training import AtomicCheckpointSaver, ResumeCheckpoint


def main(out_dir: str, max_epochs: int, kill_at: int | None) -> None:
    torch.set_num_threads(1)
    set_determinism(seed=0)
    rng = np.random.default_rng(0)
    images = [rng.random((1, 48, 48), dtype=np.float32) for _ in range(2)]
    items = [{"image": im, "label": (im > 0.6).astype(np.float32)} for im in images]
    keys = ["image", "label"]
    train_tf = Compose([
        RandSpatialCropd(keys, roi_size=(32, 32), random_size=False),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandAffined(keys, prob=0.5, rotate_range=0.3, mode=("bilinear", "nearest")),
    ])
    loader = DataLoader(Dataset(items * 3, train_tf), batch_size=2, shuffle=True, num_workers=0)
    val_loader = DataLoader(Dataset(items), batch_size=1)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 8, 4))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    best = AtomicCheckpointSaver(out_dir, {"model": net}, save_key_metric=True, key_metric_filename="best.pt")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=val_loader, network=net,
        postprocessing=Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        key_val_metric={"val_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[best],
    )
    resume = ResumeCheckpoint(os.path.join(out_dir, "ckpt"),
                              {"network": net, "optimizer": optimizer, "lr_scheduler": scheduler,
                               "best_saver": best, "validator": evaluator})
    # the resume handler first: it still saves after validation and the LR step (registered when the run starts)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net,
        optimizer=optimizer, loss_function=DiceLoss(sigmoid=True),
        train_handlers=[resume, LrScheduleHandler(scheduler, print_lr=False),
                        ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    if kill_at is not None:
        @trainer.on(Events.ITERATION_COMPLETED(once=kill_at))
        def _kill(engine):  # a hard kill mid-epoch: no handler, no finally, no flush
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.run()
    torch.save(net.state_dict(), os.path.join(out_dir, "final.pt"))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"resumed_epoch": resume.resumed_epoch, "epoch": trainer.state.epoch,
                   "iteration": trainer.state.iteration, "lr": optimizer.param_groups[0]["lr"],
                   "best_metric": float(evaluator.state.best_metric),
                   "best_metric_epoch": int(evaluator.state.best_metric_epoch)}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
