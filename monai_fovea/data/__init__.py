"""Data: real sample images (``samples``), synthetic generators (``synthetic``), WSI reading (``wsi``),
output writers (``io``) and dataset adapters (``datasets``). Import the sub-module you need."""
