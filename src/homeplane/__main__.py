from homeplane.cli import main

main()
