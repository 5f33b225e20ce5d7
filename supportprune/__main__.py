from supportprune.cli import main

main()
