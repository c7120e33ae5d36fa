"""WD-style taggers: models, label files, preprocessing, tag rules and the tagging job."""
