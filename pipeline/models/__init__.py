"""Networks: DiNA attention (`dina`), generators G1/G2, PatchGAN discriminators, VGG19 features."""
