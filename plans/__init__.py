"""bluesky plans for tomolock: runout calibration, reference scan, corrected tomography scan."""
