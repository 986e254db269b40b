"""Training: the LightningModule, fit (train(cfg)), callbacks, EMA, start-up config checks and validation scoring."""
