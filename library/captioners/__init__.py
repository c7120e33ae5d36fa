"""transformers captioners (BLIP, BLIP-2, GIT): models, image transforms and the captioning job."""
