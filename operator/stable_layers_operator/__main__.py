"""`python -m stable_layers_operator`."""

from stable_layers_operator.main import main

main()
