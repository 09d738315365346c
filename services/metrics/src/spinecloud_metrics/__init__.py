"""SpineCloud metrics: the benchmark panel, VerSe labelling metrics, statistics and reports."""
