"""Checkpoints of the paper's official code (github.com/WeilunWang/semantic-diffusion-model).

`layout` reads the network's configuration from an official state dict's tensor shapes,
`keys` renames its tensors to this project's U-Net, `published` holds what the shapes cannot
tell (the settings of the published ADE20K, CelebAMask-HQ and COCO-Stuff models). The
command that ties them together is `python -m sdm.cli.convert`.
"""
