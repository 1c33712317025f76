"""Drop-in front ends for other libraries' optimizer APIs, backed by fastlr's kernels.

  fastlr.compat.sklearn   SGDOptimizer, AdamOptimizer: scikit-learn's private
                          ``neural_network._stochastic_optimizers`` interface and numbers
  fastlr.compat.torch     SGD, RMSprop, Adam, AdamW: ``torch.optim.Optimizer`` subclasses
                          that update CPU tensors in place (needs torch)
"""
