"""Data: real sample images (``samples``), synthetic generators (``synthetic``), WSI reading (``wsi``), a MONAI
``ImageReader`` for (pyramidal) TIFFs (``readers``), output writers (``io``), label masks → QuPath GeoJSON
(``geojson``) and dataset adapters (``datasets``). Import the sub-module you need."""
