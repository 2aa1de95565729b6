"""Trainers (the vendor's module path: shardtrain.modeling.distributors.*)."""
