"""Image-quality building blocks (issue 4, in progress): MRIQC-style quality measures and a library of
controlled perturbations. Not yet registered as a validator."""
