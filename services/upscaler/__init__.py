"""Upscaler service: enlarges images 1-4x with Lanczos, bicubic or detail-recovering enhancement."""
