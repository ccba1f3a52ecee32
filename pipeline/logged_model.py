"""The import path of the MLflow model wrapper in models logged before the package was arranged in
folders: MLflow pickles a logged model's wrapper class by its module path, and those models name
`pipeline.logged_model.Inpainter`, so that path must keep resolving to the wrapper."""
from pipeline.tracking.logged_model import Inpainter  # noqa: F401
