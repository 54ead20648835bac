"""facegan-study library: data, training loop, metrics, kernels and reporting shared by the stages."""
