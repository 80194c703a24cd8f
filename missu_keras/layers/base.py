"""Shared helpers for the custom layers."""

import keras

# Every custom object of the package is registered under this package name so that
# `.keras` files load with `safe_mode=True` without `custom_objects`.
register = keras.saving.register_keras_serializable(package="missu_keras")
