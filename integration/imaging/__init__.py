"""Stored instances to model-ready images: series choice, slices, frames, windows, the referral's question.

Only the worker's pipeline and the review page's image route read it; the network and the intake never do.
"""
