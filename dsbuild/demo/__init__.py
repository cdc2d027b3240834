"""demo/: the offline end-to-end showcase (``dsbuild demo``).

==============  ==================================================================
data.py         real handwritten digits (scikit-learn) with planted problems
steps.py        the demo's steps: build, status, query, then the model loop
==============  ==================================================================
"""
