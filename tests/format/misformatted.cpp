// Left unformatted on purpose: ctest format_check_catches_a_misformatted_file runs the check on it.
int  add( int a,int b ){return a+b ;}
