"""model/: fastai fine-tuning and what a model says about the images. torch/fastai load on first use.

==============  ==================================================================
settings.py     :class:`ModelSettings` (the manifest's ``[model]`` table; no torch)
weights.py      architecture names → backbones and pretrained weights, offline first
train.py        data loaders, learner, fine-tuning, saving (:func:`train`)
features.py     softmax probabilities and mid-level features of a learner
oof.py          out-of-sample probabilities (cross-fitting) for the issue finders
predict.py      a saved model → labels and probabilities for image files
==============  ==================================================================
"""
