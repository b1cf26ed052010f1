from equivrepro.train.app import main

main()
