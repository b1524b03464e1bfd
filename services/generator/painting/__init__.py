"""How the built-in renderer paints a scene: what a prompt means, and the brushes that draw it."""
