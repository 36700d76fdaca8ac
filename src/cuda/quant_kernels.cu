// The quantization kernels and their launches (quant_kernels.cuh), compiled by nvcc; the code is
// quant_kernels_body.cuh's, which the SIMT emulation's test compiles for the CPU as well.
#include "cuda/quant_kernels.cuh"

#include "cuda/quant_kernels_body.cuh"
