# fastlr/_kernels.pxd -- the C API of fastlr's optimizer kernels.
#
# Other Cython code can `from fastlr._kernels cimport adam_f32, AdamHyper` and call these
# functions on raw pointers without the GIL. This file is a versioned interface: within a
# minor release series it only grows (new functions, new structs); a change to an existing
# declaration waits for a major release. Build against it with
# `include_dirs=[fastlr.get_include()]` (or just have fastlr installed: Cython finds .pxd
# files on sys.path).
#
# Conventions shared by every function below:
# * One function per (optimizer, dtype): *_f32 works on float32 buffers, *_f64 on float64.
# * `n` elements, updated in place, element i of every buffer belongs together. Buffers must
#   not overlap one another (the gradient included). Nothing is checked here: validate first
#   (fastlr.kernels does, for Python callers).
# * Optional state is passed as NULL when unused, and its presence selects the variant:
#   SGD momentum_buffer != NULL -> momentum; RMSprop momentum_buffer != NULL -> momentum,
#   grad_avg != NULL -> centered; Adam max_exp_avg_sq != NULL -> AMSGrad.
# * Hyperparameters in a struct of doubles; the kernel casts them to the buffers' dtype once.
#   Semantics are torch.optim 2.13's single-tensor path (see fastlr.kernels' docstrings).
# * The plain functions are serial and never open an OpenMP region. The *_parallel
#   functions split a span across up to n_threads OpenMP threads (serial below
#   PARALLEL_MIN_SIZE elements); results are bit-identical for every thread count.

from libc.stdint cimport int64_t

ctypedef struct SGDHyper:
    double lr
    double momentum
    double dampening
    double weight_decay
    int64_t step            # 1-based update number; step == 1 initialises the momentum buffer
    int nesterov            # 0 or 1
    int maximize            # 0 or 1

ctypedef struct RMSpropHyper:
    double lr
    double alpha
    double eps
    double weight_decay
    double momentum
    int maximize

ctypedef struct AdamHyper:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay
    int64_t step            # 1-based update number, drives the bias corrections
    int decoupled_weight_decay   # 1: p *= 1 - lr*wd (AdamW); 0: g += wd*p (L2)
    int maximize

ctypedef struct AdagradHyper:
    double lr
    double lr_decay
    double weight_decay
    double eps
    int64_t step            # 1-based update number: lr / (1 + (step - 1) * lr_decay)
    int maximize

ctypedef struct AdadeltaHyper:
    double lr
    double rho
    double eps
    double weight_decay
    int maximize

ctypedef struct AdamaxHyper:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay
    int64_t step            # 1-based update number, drives the bias correction
    int maximize

ctypedef struct NAdamHyper:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay
    double momentum_decay
    double mu_product       # product of mu_1 .. mu_(step-1) (1.0 before the first update)
    int64_t step
    int decoupled_weight_decay
    int maximize

ctypedef struct RAdamHyper:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay
    int64_t step
    int decoupled_weight_decay
    int maximize

ctypedef struct LionHyper:
    double lr
    double beta1            # interpolation of the update direction
    double beta2            # decay of the momentum
    double weight_decay     # decoupled: p -= lr * wd * p (optax's add_decayed_weights)
    int maximize

# Elements below which the *_parallel functions stay serial (a parallel region costs about
# 2 us on two threads; below this size that is more than the work it would share).
cdef enum:
    PARALLEL_MIN_SIZE = 32768

# A span function updates elements [start, stop) of whatever `ctx` describes.
ctypedef void (*span_fn)(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil

# The threaded loop: calls fn(ctx, start, stop) over [0, n) split into at most n_threads
# cache-line aligned spans, one per OpenMP thread; serial below PARALLEL_MIN_SIZE.
cdef void parallel_spans(span_fn fn, void* ctx, Py_ssize_t n, int n_threads) noexcept nogil

# The OpenMP maximum thread count (1 in a build without OpenMP, and in a forked child).
cdef int max_threads() noexcept nogil

# The thread count a threaded loop of your own may use: n_threads, or 1 in a child process
# forked from one that ran fastlr (GNU OpenMP's thread pool does not survive fork; a
# parallel region there hangs). parallel_spans applies it already.
cdef int usable_threads(int n_threads) noexcept nogil

# ---- SGD (momentum, dampening, Nesterov, L2 weight decay, maximize) ----
cdef void sgd_f32(float* param, const float* grad, float* momentum_buffer,
                  Py_ssize_t n, const SGDHyper* h) noexcept nogil
cdef void sgd_f64(double* param, const double* grad, double* momentum_buffer,
                  Py_ssize_t n, const SGDHyper* h) noexcept nogil
cdef void sgd_f32_parallel(float* param, const float* grad, float* momentum_buffer,
                           Py_ssize_t n, const SGDHyper* h, int n_threads) noexcept nogil
cdef void sgd_f64_parallel(double* param, const double* grad, double* momentum_buffer,
                           Py_ssize_t n, const SGDHyper* h, int n_threads) noexcept nogil

# ---- RMSprop (centered, momentum, L2 weight decay, maximize) ----
cdef void rmsprop_f32(float* param, const float* grad, float* square_avg,
                      float* momentum_buffer, float* grad_avg,
                      Py_ssize_t n, const RMSpropHyper* h) noexcept nogil
cdef void rmsprop_f64(double* param, const double* grad, double* square_avg,
                      double* momentum_buffer, double* grad_avg,
                      Py_ssize_t n, const RMSpropHyper* h) noexcept nogil
cdef void rmsprop_f32_parallel(float* param, const float* grad, float* square_avg,
                               float* momentum_buffer, float* grad_avg,
                               Py_ssize_t n, const RMSpropHyper* h, int n_threads) noexcept nogil
cdef void rmsprop_f64_parallel(double* param, const double* grad, double* square_avg,
                               double* momentum_buffer, double* grad_avg,
                               Py_ssize_t n, const RMSpropHyper* h, int n_threads) noexcept nogil

# ---- Adam / AdamW (bias correction, AMSGrad, L2 or decoupled weight decay, maximize) ----
cdef void adam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                   float* max_exp_avg_sq, Py_ssize_t n, const AdamHyper* h) noexcept nogil
cdef void adam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
                   double* max_exp_avg_sq, Py_ssize_t n, const AdamHyper* h) noexcept nogil
cdef void adam_f32_parallel(float* param, const float* grad, float* exp_avg,
                            float* exp_avg_sq, float* max_exp_avg_sq, Py_ssize_t n,
                            const AdamHyper* h, int n_threads) noexcept nogil
cdef void adam_f64_parallel(double* param, const double* grad, double* exp_avg,
                            double* exp_avg_sq, double* max_exp_avg_sq, Py_ssize_t n,
                            const AdamHyper* h, int n_threads) noexcept nogil

# ---- Adagrad (lr_decay, L2 weight decay, maximize); state_sum starts at initial_accumulator_value ----
cdef void adagrad_f32(float* param, const float* grad, float* state_sum,
        Py_ssize_t n, const AdagradHyper* h) noexcept nogil
cdef void adagrad_f64(double* param, const double* grad, double* state_sum,
        Py_ssize_t n, const AdagradHyper* h) noexcept nogil
cdef void adagrad_f32_parallel(float* param, const float* grad, float* state_sum,
        Py_ssize_t n, const AdagradHyper* h, int n_threads) noexcept nogil
cdef void adagrad_f64_parallel(double* param, const double* grad, double* state_sum,
        Py_ssize_t n, const AdagradHyper* h, int n_threads) noexcept nogil

# ---- Adadelta (L2 weight decay, maximize) ----
cdef void adadelta_f32(float* param, const float* grad, float* square_avg, float* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h) noexcept nogil
cdef void adadelta_f64(double* param, const double* grad, double* square_avg, double* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h) noexcept nogil
cdef void adadelta_f32_parallel(float* param, const float* grad, float* square_avg, float* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h, int n_threads) noexcept nogil
cdef void adadelta_f64_parallel(double* param, const double* grad, double* square_avg, double* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h, int n_threads) noexcept nogil

# ---- Adamax (bias correction, L2 weight decay, maximize) ----
cdef void adamax_f32(float* param, const float* grad, float* exp_avg, float* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h) noexcept nogil
cdef void adamax_f64(double* param, const double* grad, double* exp_avg, double* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h) noexcept nogil
cdef void adamax_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h, int n_threads) noexcept nogil
cdef void adamax_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h, int n_threads) noexcept nogil

# ---- NAdam (momentum decay, L2 or decoupled weight decay, maximize); the caller keeps
#      mu_product: after the update it is h.mu_product * nadam_mu(h.beta1, h.momentum_decay, h.step) ----
cdef void nadam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h) noexcept nogil
cdef void nadam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h) noexcept nogil
cdef void nadam_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h, int n_threads) noexcept nogil
cdef void nadam_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h, int n_threads) noexcept nogil

# ---- RAdam (rectification, L2 or decoupled weight decay, maximize) ----
cdef void radam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h) noexcept nogil
cdef void radam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h) noexcept nogil
cdef void radam_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h, int n_threads) noexcept nogil
cdef void radam_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h, int n_threads) noexcept nogil

# ---- Lion (optax's definition: sign of the interpolated momentum, decoupled decay) ----
cdef void lion_f32(float* param, const float* grad, float* exp_avg,
        Py_ssize_t n, const LionHyper* h) noexcept nogil
cdef void lion_f64(double* param, const double* grad, double* exp_avg,
        Py_ssize_t n, const LionHyper* h) noexcept nogil
cdef void lion_f32_parallel(float* param, const float* grad, float* exp_avg,
        Py_ssize_t n, const LionHyper* h, int n_threads) noexcept nogil
cdef void lion_f64_parallel(double* param, const double* grad, double* exp_avg,
        Py_ssize_t n, const LionHyper* h, int n_threads) noexcept nogil

# NAdam's momentum coefficient mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)).
cdef double nadam_mu(double beta1, double momentum_decay, int64_t step) noexcept nogil
