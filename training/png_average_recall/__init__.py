"""The `png_average_recall` evaluate module; a package so that wheels ship it next to `training.metrics`."""
