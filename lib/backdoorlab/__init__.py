"""backdoorlab: backdoors in instruction-tuned language models and instructional fingerprints."""
