"""Model artefacts: the manifest every SpineCloud model carries, whatever its backend."""
