"""Test helpers that start real cluster software (SLURM) for the cluster tests."""

from .slurm import ClusterUnavailable, SlurmCluster

__all__ = ["ClusterUnavailable", "SlurmCluster"]
