import * as adapter from '../adapter.mjs';
import { stateSuite } from '../../lib/suites/state.mjs';

stateSuite(adapter);
