"""Where nnU-Net v2 finds fedgin's trainers: ``export nnUNet_extTrainer=$(fedgin nnunet trainers-dir)`` names this
folder, and nnU-Net's lookup imports this module by its file name. The trainers are
:mod:`fedgin.integrations.nnunet`'s."""
from fedgin.integrations.nnunet import nnUNetTrainerGIN, nnUNetTrainerGIN_IPA, nnUNetTrainerGINShared

__all__ = ["nnUNetTrainerGIN", "nnUNetTrainerGINShared", "nnUNetTrainerGIN_IPA"]
