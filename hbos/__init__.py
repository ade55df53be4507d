"""HyperBEAM OS: build, measure and run SEV-SNP confidential VMs for HyperBEAM nodes."""

__version__ = "0.1.0"
