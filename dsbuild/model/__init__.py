"""model/: training and what a model says about the images. torch/fastai load on first use.

==============  ==================================================================
settings.py     :class:`ModelSettings` (the manifest's ``[model]`` table; no torch)
weights.py      architecture names → backbones and pretrained weights, offline first
features.py     frozen-backbone features cached per blob (public: ``features(paths, spec, cache_dir)``,
                also for embeddings); softmax probabilities and stage features of a fastai learner
head.py         logistic heads on frozen features (penalty by inner CV), folded into one network
train.py        :func:`train`: a head on frozen features (default) or fastai fine-tuning; saving
trust.py        did the model learn? (binomial test, kappa); expected right flags; the flag rule
oof.py          out-of-sample probabilities (K-fold heads, cross-fitting) for the issue finders
predict.py      a saved model → labels and probabilities for image files
==============  ==================================================================
"""
